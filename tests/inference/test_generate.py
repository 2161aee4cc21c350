"""okto's engine against Hugging Face generate, batching, sampling, stops and limits (CPU, fp32)."""

import re

import pytest
import torch

import okto
from okto.errors import RunError, UsageError
from okto.inference import load_model
from tests.inference import models
from tests.inference.models import PROMPTS


def hf_greedy(model, prompt_ids, n, **options):
    ids = torch.tensor([prompt_ids])
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=n,
        do_sample=False,
        pad_token_id=0,
        **options,
    )
    return out[0, ids.shape[1] :].tolist()


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_greedy_matches_hf_generate(kind, penalty, loaded, hf_dirs):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(hf_dirs[kind]).eval()
    model = loaded[kind]
    for g in model.generate(PROMPTS, max_tokens=24, temperature=0, repetition_penalty=penalty):
        expected = hf_greedy(hf, model.encode(g.prompt), 24, repetition_penalty=penalty)
        assert g.token_ids == expected[: len(g.token_ids)], g.prompt
        assert g.finish_reason == "length" or expected[len(g.token_ids) - 1] in model.eos_ids


def test_llama3_rope_scaling_matches_hf(tmp_path):
    from transformers import AutoModelForCausalLM

    rope = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
    }
    path = models.save("llama", tmp_path / "llama3", rope_parameters=rope)
    hf = AutoModelForCausalLM.from_pretrained(path).eval()
    model = load_model(path, device="cpu")
    for g in model.generate(PROMPTS, max_tokens=16, temperature=0):
        assert g.token_ids == hf_greedy(hf, model.encode(g.prompt), 16)[: len(g.token_ids)]


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_batching_gives_the_same_text(kind, loaded):
    model = loaded[kind]
    together = model.generate(PROMPTS, max_tokens=16, temperature=0)
    alone = [model.generate(p, max_tokens=16, temperature=0)[0] for p in PROMPTS]
    assert [g.text for g in together] == [g.text for g in alone]
    assert [g.index for g in together] == list(range(len(PROMPTS)))


def test_seeded_sampling_is_reproducible_whatever_the_batch(loaded):
    model = loaded["llama"]
    options = {"max_tokens": 12, "temperature": 1.0, "top_p": 0.9, "top_k": 50}
    first = model.generate(PROMPTS, seed=7, **options)
    again = model.generate(PROMPTS, seed=7, batch_size=1, **options)
    other = model.generate(PROMPTS, seed=8, **options)
    assert [g.token_ids for g in first] == [g.token_ids for g in again]
    assert [g.token_ids for g in first] != [g.token_ids for g in other]
    assert all(g.seed == 7 for g in first)


def test_sampling_follows_the_distribution():
    """The hashed Gumbel draw samples from softmax(logits): frequencies over many rows."""
    from okto.inference.sampling import Sampler

    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05])).repeat(20000, 1)
    seen = torch.zeros_like(logits, dtype=torch.bool)
    keys = torch.arange(20000, dtype=torch.int64) * 7919
    tokens = Sampler(temperature=1.0, top_p=1.0)(logits, seen, keys, torch.tensor(3))
    freq = torch.bincount(tokens, minlength=4).float() / 20000
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.015)
    top_k = Sampler(temperature=1.0, top_k=2)(logits, seen, keys, torch.tensor(3))
    assert set(top_k.tolist()) == {0, 1}
    top_p = Sampler(temperature=1.0, top_p=0.6)(logits, seen, keys, torch.tensor(3))
    assert set(top_p.tolist()) == {0, 1}


def test_max_tokens_and_stop_sequences(loaded):
    model = loaded["gpt2"]
    (full,) = model.generate(PROMPTS[0], max_tokens=20, temperature=0)
    assert full.generated_tokens == 20 and full.finish_reason == "length"
    stop = full.text[6:9]
    (cut,) = model.generate(PROMPTS[0], max_tokens=20, temperature=0, stop=["@@never", stop])
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.index(stop)]
    assert cut.generated_tokens < 20


def test_eos_ends_a_row(loaded):
    model = loaded["llama"]
    (full,) = model.generate(PROMPTS[1], max_tokens=12, temperature=0)
    eos = full.token_ids[4]
    saved = model.eos_ids
    model.eos_ids = {eos}
    try:
        (cut,) = model.generate(PROMPTS[1], max_tokens=12, temperature=0)
    finally:
        model.eos_ids = saved
    assert cut.finish_reason == "eos"
    assert cut.token_ids == full.token_ids[: full.token_ids.index(eos) + 1]
    # the text leaves out an EOS token that is no special token (it was decoded into it)
    assert cut.text == model.tokenizer.decode(cut.token_ids[:-1], skip_special_tokens=True)


def test_streamed_text_adds_up(loaded):
    model = loaded["gpt2"]
    (full,) = model.generate(PROMPTS[2], max_tokens=15, temperature=0)
    for stop in (None, full.text[4:7]):
        pieces = []
        (g,) = model.generate(
            PROMPTS[2],
            max_tokens=15,
            temperature=0,
            stop=stop,
            stream=lambda i, t, p=pieces: p.append((i, t)),
        )
        assert "".join(t for _, t in pieces) == g.text
        assert {i for i, _ in pieces} == {0}
        assert stop is None or stop not in g.text


def test_context_window_is_respected(loaded):
    model = loaded["gpt2"]
    room = model.context_window - len(model.encode(PROMPTS[0]))
    long, fits = model.generate([PROMPTS[0] * 200, PROMPTS[0]], max_tokens=4)
    assert long.finish_reason == "error" and "context window" in long.error
    assert fits.error is None and fits.generated_tokens == 4
    with pytest.raises(RunError, match=r"prompt 1: it has .* context window"):
        okto.generate(model, PROMPTS[0] * 200, max_tokens=4)
    (g,) = model.generate(PROMPTS[0], max_tokens=room + 50, temperature=0, stop=None)
    assert g.generated_tokens <= room


def test_figures_are_reported(loaded):
    (g,) = loaded["gpt2"].generate(PROMPTS[0], max_tokens=8, temperature=0)
    assert g.ttft_s > 0 and g.tokens_per_s > 0
    assert g.stats.decode_tokens_per_s > 0 and g.stats.total_tokens_per_s > 0
    assert g.stats.decode_gb_per_s > 0
    assert g.stats.peak_gb_per_s is None  # no bandwidth peak on a CPU


def test_hf_backend_and_unsupported_architecture_fall_back(hf_dirs, loaded, tmp_path):
    import transformers

    via_hf = load_model(hf_dirs["llama"], device="cpu", backend="hf", decode_steps=2)
    assert "Hugging Face generate" in via_hf.notes[0]
    assert via_hf.notes[1] == "okto engine settings not used by Hugging Face generate: decode_steps"
    ours = loaded["llama"].generate(PROMPTS, max_tokens=10, temperature=0)
    theirs = via_hf.generate(PROMPTS, max_tokens=10, temperature=0)
    assert [g.text for g in theirs] == [g.text for g in ours]

    tok = models.tokenizer("gpt2")
    config = transformers.OPTConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=1,
        ffn_dim=64,
        num_attention_heads=2,
        max_position_embeddings=64,
        word_embed_proj_dim=32,
    )
    transformers.OPTForCausalLM(config).save_pretrained(tmp_path / "opt")
    tok.save_pretrained(tmp_path / "opt")
    opt = load_model(tmp_path / "opt", device="cpu")
    assert "not 'opt'" in opt.notes[0]
    (g,) = opt.generate("Hello", max_tokens=5, temperature=0, stop="zzz")
    assert g.generated_tokens <= 5


@pytest.mark.slow
@pytest.mark.skipif(
    torch.cuda.is_available(), reason="on a GPU, test_gpu.py runs the compiled kernels"
)
def test_okto_kernels_plug_in(loaded, monkeypatch):
    """okto's Triton kernels (Triton's interpreter on CPU) give the same tokens as PyTorch ops."""
    import dataclasses

    import okto.kernels
    from okto.inference import decoder, ops
    from okto.inference.engine import Engine

    monkeypatch.setenv("OKTO_KERNELS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    model = loaded["llama"]
    expected = model.generate(PROMPTS[2], max_tokens=3, temperature=0)[0].token_ids
    # every op of both phases on okto's kernels, the decode step's matmuls included
    fields = ops.kernel_ops(okto.kernels, ops._kernel_adapters(okto.kernels))
    assert set(fields) == {f.name for f in dataclasses.fields(ops.Ops)} - {"kernels"}
    kernel_ops = dataclasses.replace(ops.Ops(), **fields)
    spec = model.engine.model.spec
    plan = ops.Plan(prefill=kernel_ops, decode=kernel_ops)
    engine = Engine(
        decoder.build(spec, model.checkpoint.tensors(), plan, torch.device("cpu"), torch.float32)
    )
    monkeypatch.setattr(model, "engine", engine)
    assert model.generate(PROMPTS[2], max_tokens=3, temperature=0)[0].token_ids == expected


def test_rows_with_little_room_share_a_batch(loaded):
    """A prompt near the end of the context window stops there; its batch-mates go on."""
    model = loaded["gpt2"]
    ids = model.encode(" ".join(PROMPTS) * 40)[: model.context_window - 5]
    long_prompt = model.tokenizer.decode(ids)
    room = model.context_window - len(model.encode(long_prompt))
    short, cramped = model.generate([PROMPTS[2], long_prompt], max_tokens=20, temperature=0)
    assert cramped.generated_tokens == room and cramped.finish_reason == "length"
    assert short.generated_tokens == 20
    assert short.token_ids == model.generate(PROMPTS[2], max_tokens=20, temperature=0)[0].token_ids


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_bucketed_shapes_give_the_same_tokens(kind, loaded, monkeypatch):
    """CUDA's padded shapes (dummy rows, wider prompts, longer cache), run on the CPU."""
    from okto.inference import engine

    model = loaded[kind]
    exact = model.generate(PROMPTS[:3], max_tokens=12, temperature=0)
    spec = model.engine.model.spec
    monkeypatch.setattr(
        model.engine, "_shape", lambda *shape: engine.bucketed(*shape, spec.max_positions)
    )
    padded = model.generate(PROMPTS[:3], max_tokens=12, temperature=0)
    assert [g.token_ids for g in padded] == [g.token_ids for g in exact]
    assert len(model.engine.slots) and next(reversed(model.engine.slots))[:2] == (4, 256)


def test_buckets_stay_inside_the_model():
    from okto.inference.engine import bucketed

    assert bucketed(3, 5, 69, 1024) == (4, 16, 256)
    assert bucketed(33, 700, 764, 1024) == (64, 768, 768)
    assert bucketed(100, 1984, 2048, 2048) == (128, 2048, 2048)
    # a width bucket never passes the model's positions, nor falls below the prompt
    assert bucketed(1, 990, 1000, 1000) == (1, 1000, 1024)
    assert bucketed(1, 300, 310, 300) == (1, 300, 512)


def test_a_chat_template_that_writes_bos_gets_one(hf_dirs, tmp_path):
    """Llama-style chat templates start with the BOS token, and the tokenizer adds one
    too: the turn must reach the model with a single BOS, as `apply_chat_template` gives."""
    import json
    import shutil

    folder = shutil.copytree(hf_dirs["llama"], tmp_path / "chat")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = (
        "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n"
        "{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    model = load_model(folder, device="cpu")
    messages = [{"role": "user", "content": "Hello"}]
    text = model.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    expected = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = model.tokenizer.bos_token_id
    assert expected[:2] == [bos, expected[1]] and expected[1] != bos
    (g,) = model.generate("Hello", mode="chat", max_tokens=1, temperature=0)
    assert g.prompt_tokens == len(expected)
    # a prompt that writes two BOS keeps them; one the tokenizer adds stays single
    assert model.encode("<s><s>Hi")[:3] == [bos, bos, bos]
    assert model.encode("Hi")[:2] == [bos, model.encode("<s>Hi")[1]]


@pytest.mark.parametrize(
    ("option", "value", "words"),
    [
        ("temperature", float("nan"), "temperature must be a finite number, got nan"),
        ("temperature", float("inf"), "temperature must be a finite number, got inf"),
        ("repetition_penalty", float("nan"), "repetition_penalty must be a finite number"),
        # dividing a seen logit by it overflowed to infinity: NaN probabilities
        ("repetition_penalty", 1e-40, "repetition_penalty must be above 0 (1.2e-38 at least)"),
        ("top_p", "0.5", "top_p must be a finite number, got '0.5'"),
        ("top_k", 2.5, "top_k must be an integer, got 2.5"),
        ("seed", 1.5, "seed must be an integer, got 1.5"),
        ("max_tokens", True, "max_tokens must be an integer, got True"),
    ],
)
def test_a_setting_that_cannot_sample_is_refused(loaded, option, value, words):
    """A NaN temperature sampled token 0 (argmax of NaNs) every step, without a word; a float
    top_k or seed failed deep in the sampler with a TypeError."""
    with pytest.raises(UsageError, match=re.escape(words)):
        loaded["gpt2"].generate("Hello", **{option: value})


def test_any_int_seed_runs_on_the_hf_backend(okm_files):
    """torch's generator takes 64 bits; a larger seed, which okto's engine takes, was a
    ValueError traceback on the hf backend."""
    model = load_model(okm_files["gpt2"], device="cpu", backend="hf")
    (g,) = model.generate("Hello", max_tokens=3, seed=10**30)
    assert g.seed == 10**30 and g.generated_tokens == 3


def test_hf_backend_leaves_the_callers_random_state_alone(okm_files):
    """generate on the hf backend seeded torch's global generator and left it so: a program's
    own random numbers after a call were the same after every call."""
    model = load_model(okm_files["gpt2"], device="cpu", backend="hf")
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    model.generate("Hello", max_tokens=2, seed=1, temperature=1.0)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("dtype", ["fp8", "int8"])
def test_a_dtype_to_run_in_is_a_float_one(okm_files, dtype):
    """fp8 was an AttributeError traceback, int8 a load_state_dict RuntimeError."""
    with pytest.raises(UsageError, match=f"unknown dtype '{dtype}'; choose one of fp32, fp16"):
        load_model(okm_files["gpt2"], device="cpu", dtype=dtype)


class Scripted:
    """okto's engine, but the tokens it 'generates' are `tokens`, whatever the model computes."""

    def __init__(self, engine, tokens: list[int]):
        self.engine, self.tokens = engine, tokens

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def run(self, prompts, max_new, sampler, tracker):
        for token in self.tokens[:max_new]:
            if tracker.push([token] * len(prompts)):
                return


def test_a_completion_keeps_the_space_a_sentencepiece_decoder_drops(tmp_path):
    """Llama's decoder drops the space of the first token it decodes ('▁time' alone is 'time'):
    'Once upon a' was printed with 'time is' after it, 'Once upon atime is', streamed or not."""
    tok = models.sentencepiece_tokenizer()
    model = load_model(models.save("llama", tmp_path / "sp", tok=tok), device="cpu")
    reply = tok("time is", add_special_tokens=False)["input_ids"]
    model.engine = Scripted(model.engine, reply)
    pieces = []
    for stream, stop in ((None, None), (lambda i, t: pieces.append(t), None), (None, "@@")):
        (g,) = model.generate("Once upon a", max_tokens=len(reply), stream=stream, stop=stop)
        assert g.text == " time is"
    assert "".join(pieces) == " time is"


@pytest.mark.parametrize(
    ("prompts", "words"),
    [
        (["fine", 3], "prompt 2 is an int, not text"),
        ("caf\udce9", "prompt 1: not UTF-8 text"),
        (None, "prompts: a string or a list of strings, not None"),
    ],
)
def test_a_prompt_that_is_not_text_is_a_usage_error(loaded, prompts, words):
    """A number, or a string holding bytes that were not UTF-8 (lone surrogates), failed inside
    the template or the tokenizer with a TypeError."""
    with pytest.raises(UsageError, match=words):
        loaded["gpt2"].generate(prompts, max_tokens=2)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"stop": 5}, "stop: a string or a list of strings, not 5"),
        ({"stop": ["a", 5]}, r"stop sequences must be strings, got \['a', 5\]"),
        ({"template": 5}, "template must be a string, got 5"),
        ({"stream": 5}, "stream must be a function, got 5"),
        ({"done": "print"}, "done must be a function, got 'print'"),
    ],
)
def test_generate_settings_of_the_wrong_kind_are_usage_errors(loaded, options, words):
    """Each was a TypeError traceback, a stream or done callback only after generating."""
    with pytest.raises(UsageError, match=words):
        loaded["gpt2"].generate("Hello", max_tokens=2, **options)


def test_bytes_are_not_taken_for_a_list_of_prompts(loaded):
    """b"Hello" was read as five prompts and refused as 'prompt 1 is a int'."""
    with pytest.raises(UsageError, match=r"not a bytes \(decode them to a string first\)"):
        loaded["gpt2"].generate(b"Hello", max_tokens=2)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"compile": "no"}, "compile must be True or False, got 'no'"),
        ({"cuda_graphs": "off"}, "cuda_graphs must be True or False, got 'off'"),
    ],
)
def test_load_model_flags_must_be_booleans(okm_files, options, words):
    """compile="no" compiled the decode step: any non-empty string is true."""
    with pytest.raises(UsageError, match=words):
        load_model(okm_files["gpt2"], device="cpu", **options)


def test_load_model_refuses_a_path_that_is_no_path():
    with pytest.raises(UsageError, match="path: the model's path or hub name, not 5"):
        load_model(5)


def test_a_batch_matches_hf_left_padded_batch_with_rows_ending_apart(loaded, hf_dirs, monkeypatch):
    """Prompts of different lengths in one batch against Hugging Face's left-padded batch, with
    an EOS the rows reach at different steps: each row's tokens are HF's up to its EOS, and a
    finished row gets no token after it (HF pads it)."""
    from transformers import AutoModelForCausalLM

    model = loaded["gpt2"]
    free = [g.token_ids for g in model.generate(PROMPTS, max_tokens=16, temperature=0)]
    common = set.intersection(*(set(ids) for ids in free))
    eos = max(common, key=lambda t: len({ids.index(t) for ids in free}))
    assert len({ids.index(eos) for ids in free}) > 1  # the rows end at different steps
    monkeypatch.setattr(model, "eos_ids", {eos})
    ours = model.generate(PROMPTS, max_tokens=16, temperature=0)

    hf = AutoModelForCausalLM.from_pretrained(hf_dirs["gpt2"]).eval()
    prompts = [model.encode(p) for p in PROMPTS]
    width, pad = max(map(len, prompts)), eos + 1
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = hf.generate(
        ids, attention_mask=mask, max_new_tokens=16, do_sample=False, eos_token_id=eos,
        pad_token_id=pad,
    )[:, width:].tolist()
    for g, row in zip(ours, out, strict=True):
        assert g.finish_reason == "eos"
        n = row.index(eos) + 1
        assert g.token_ids == row[:n] and set(row[n:]) <= {pad}


def test_a_tiny_temperature_is_greedy_on_the_hf_backend(okm_files):
    """temperature=1e-50 made Hugging Face's sampler divide the logits into infinities:
    torch.multinomial's 'probability tensor contains either inf, nan' traceback."""
    model = load_model(okm_files["gpt2"], device="cpu", backend="hf")
    (greedy,) = model.generate("Hello", max_tokens=4, temperature=0)
    (tiny,) = model.generate("Hello", max_tokens=4, temperature=1e-50, seed=3)
    assert tiny.token_ids == greedy.token_ids
