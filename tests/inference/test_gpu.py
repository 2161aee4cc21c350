"""On a CUDA device: fp16 against Hugging Face (eager and compiled decode steps), CUDA-graph
decoding (one or several steps per graph) against eager decoding, and the kernel plan.

Tolerance: fp16 last-token logits within 3e-2 (absolute and relative) of
Hugging Face's fp16 logits on the tiny models; greedy tokens equal Hugging
Face's until a step where its two best logits are within 0.1 of each other.
"""

import signal

import pytest
import torch

from okto.inference import load_model
from okto.inference.decoder import KVCache
from tests.inference.models import PROMPTS

pytestmark = pytest.mark.gpu
NEAR_TIE = 0.1


def hf_model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float16).cuda().eval()


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_kernels_pass_their_probe(kind, okm_files):
    model = load_model(okm_files[kind], device="cuda", dtype="fp16")
    assert model.notes == (), model.notes
    plan, norm = model.engine.model.plan, "rms_norm" if kind == "llama" else "layer_norm"
    assert plan.prefill.kernels == ("linear", norm, "prefill_attention")
    assert plan.decode.kernels == (norm, "decode_attention")  # matmuls stay on cuBLAS
    compiled = load_model(okm_files[kind], device="cuda", dtype="fp16", compile=True)
    assert compiled.engine.model.plan.decode.kernels == ()


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_fp16_logits_match_hf(kind, okm_files, hf_dirs):
    model, hf = load_model(okm_files[kind], device="cuda", dtype="fp16"), hf_model(hf_dirs[kind])
    decoder = model.engine.model
    for prompt in PROMPTS:
        ids = torch.tensor([model.encode(prompt)], device="cuda")
        cache = KVCache(decoder.spec, 1, ids.shape[1], torch.float16, "cuda")
        with torch.inference_mode():
            ours = decoder.prefill(ids, torch.tensor([ids.shape[1]], device="cuda"), cache)
            theirs = hf(ids).logits[:, -1].float()
        torch.testing.assert_close(ours, theirs, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("compile", [False, True])
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_fp16_greedy_matches_hf_until_a_near_tie(kind, compile, okm_files, hf_dirs):
    model = load_model(okm_files[kind], device="cuda", dtype="fp16", compile=compile)
    hf = hf_model(hf_dirs[kind])
    for g in model.generate(PROMPTS, max_tokens=24, temperature=0):
        ids = torch.tensor([model.encode(g.prompt)], device="cuda")
        out = hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=len(g.token_ids),
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
            pad_token_id=0,
        )
        expected = out.sequences[0, ids.shape[1] :].tolist()
        for step, (mine, theirs) in enumerate(zip(g.token_ids, expected, strict=False)):
            if mine != theirs:
                top2 = out.scores[step][0].float().topk(2).values
                assert top2[0] - top2[1] < NEAR_TIE, f"{g.prompt!r} differs at step {step}"
                break


@pytest.mark.parametrize("steps", [1, 4, 7])
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_cuda_graph_decoding_equals_eager(kind, steps, okm_files):
    """Graphs of `steps` decode steps (7 does not divide the 39 steps: the last chunk overshoots)."""
    graphs = load_model(okm_files[kind], device="cuda", dtype="fp16", decode_steps=steps)
    eager = load_model(
        okm_files[kind], device="cuda", dtype="fp16", cuda_graphs=False, decode_steps=1
    )
    assert graphs.engine.graphs and not eager.engine.graphs
    for options in ({"temperature": 0}, {"temperature": 0.9, "top_p": 0.9, "seed": 5}):
        a = graphs.generate(PROMPTS, max_tokens=40, **options)
        b = eager.generate(PROMPTS, max_tokens=40, **options)
        assert [g.token_ids for g in a] == [g.token_ids for g in b]
    # a second call replays the captured step on fresh state
    again = graphs.generate(PROMPTS, max_tokens=40, temperature=0)
    assert [g.token_ids for g in again] == [
        g.token_ids for g in eager.generate(PROMPTS, max_tokens=40, temperature=0)
    ]


def test_long_prompt_and_bandwidth_report(okm_files):
    model = load_model(okm_files["gpt2"], device="cuda", dtype="fp16")
    long_prompt = model.tokenizer.decode(model.encode(" ".join(PROMPTS) * 8)[:200])
    (g,) = model.generate(long_prompt, max_tokens=8, temperature=0)
    assert g.generated_tokens == 8
    assert g.stats.decode_gb_per_s > 0


def test_hf_backend_on_cuda_is_seeded_and_leaves_the_random_state_alone(okm_files):
    """The hf backend seeds torch's generators for a call only (torch.random.fork_rng over the
    model's GPU): a seed replays its text, and the caller's CUDA random numbers carry on."""
    model = load_model(okm_files["gpt2"], device="cuda", backend="hf")
    torch.cuda.manual_seed(5)
    expected = torch.rand(3, device="cuda")
    torch.cuda.manual_seed(5)
    first = model.generate("Hello", max_tokens=8, seed=3, temperature=1.0)[0].text
    assert torch.equal(torch.rand(3, device="cuda"), expected)
    assert model.generate("Hello", max_tokens=8, seed=3, temperature=1.0)[0].text == first


@pytest.mark.parametrize("during", ["prefill", "decode"])
def test_ctrl_c_during_graph_capture_leaves_the_model_working(
    during, okm_files, monkeypatch, recwarn
):
    """Ctrl-C while a reply's first CUDA graph is being captured (what `okto chat` meets when a
    user stops the first reply at once): the graph is given up, and the next reply captures it
    again and generates what an uninterrupted model generates. torch's warning about the
    empty graph a stop at the capture's start leaves is not shown."""
    expected = load_model(okm_files["gpt2"], device="cuda", dtype="fp16").generate(
        PROMPTS[:1], max_tokens=16, temperature=0
    )
    model = load_model(okm_files["gpt2"], device="cuda", dtype="fp16")
    owner = model.engine.model if during == "prefill" else model.engine
    original, pressed = getattr(owner, during), []

    def stopped_in_capture(*args):
        if torch.cuda.is_current_stream_capturing() and not pressed:
            pressed.append(during)
            signal.raise_signal(signal.SIGINT)
        return original(*args)

    monkeypatch.setattr(owner, during, stopped_in_capture)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    try:
        with pytest.raises(KeyboardInterrupt):
            model.generate(PROMPTS[:1], max_tokens=16, temperature=0)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert pressed == [during]
    assert not [w for w in recwarn if "CUDA Graph is empty" in str(w.message)]
    again = model.generate(PROMPTS[:1], max_tokens=16, temperature=0)
    assert [g.token_ids for g in again] == [g.token_ids for g in expected]
