"""The engine's decode loop: chunks of unrolled steps (what one CUDA graph replays), stops
inside a chunk, the compiled step, and the per-phase kernel plan (CPU, fp32)."""

import pytest
import torch

from okto.errors import RunError, UsageError
from okto.inference import load_model, ops
from okto.inference.engine import Engine
from okto.inference.sampling import Sampler
from tests.inference.models import PROMPTS


@pytest.fixture
def with_engine(monkeypatch):
    """Run a loaded model on a fresh engine over its decoder, with these engine options."""

    def use(model, **options):
        monkeypatch.setattr(model, "engine", Engine(model.engine.model, **options))
        return model

    return use


def tokens(model, prompts=PROMPTS, **options):
    return [g.token_ids for g in model.generate(prompts, **options)]


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_chunk_size_does_not_change_the_tokens(kind, loaded, with_engine):
    """Greedy and seeded sampling, with chunks that divide the step count and ones that do not."""
    model = loaded[kind]
    greedy = {"max_tokens": 13, "temperature": 0, "repetition_penalty": 1.2}
    sampled = {"max_tokens": 9, "temperature": 0.9, "top_p": 0.9, "seed": 4}
    expected = [tokens(model, **greedy), tokens(model, **sampled)]
    for steps in (1, 3, 12):
        with_engine(model, decode_steps=steps)
        assert [tokens(model, **greedy), tokens(model, **sampled)] == expected, steps


def test_stops_inside_a_chunk_are_exact(loaded, with_engine, monkeypatch):
    """EOS, a stop sequence and max_tokens that fall mid-chunk end the text where one step at a
    time ends it; the chunk's later tokens are dropped."""
    model = loaded["gpt2"]
    (full,) = model.generate(PROMPTS[0], max_tokens=20, temperature=0)
    stop, eos = full.text[6:9], full.token_ids[5]

    def ends(steps):
        with_engine(model, decode_steps=steps)
        out = [
            model.generate(PROMPTS[0], max_tokens=20, temperature=0, stop=stop)[0],
            model.generate(PROMPTS[0], max_tokens=6, temperature=0)[0],
        ]
        with monkeypatch.context() as m:
            m.setattr(model, "eos_ids", {eos})
            out.append(model.generate(PROMPTS[0], max_tokens=20, temperature=0)[0])
        return [(g.finish_reason, g.text, g.token_ids) for g in out]

    chunked = ends(16)
    assert [reason for reason, _, _ in chunked] == ["stop", "length", "eos"]
    assert chunked == ends(1)
    assert chunked[0][1] == full.text[: full.text.index(stop)]
    assert chunked[1][2] == full.token_ids[:6]
    assert chunked[2][2] == full.token_ids[: full.token_ids.index(eos) + 1]


def test_no_token_reaches_the_tracker_after_it_is_done(loaded):
    """The tracker says it is done after its third token: the engine hands it no more, though
    the chunk made eight."""

    class Tracker:
        def __init__(self):
            self.keys, self.pushed = [1], []

        def push(self, step_tokens):
            self.pushed.append(step_tokens)
            return len(self.pushed) == 3

    engine = Engine(loaded["gpt2"].engine.model, decode_steps=8)
    tracker = Tracker()
    engine.run([[5, 6, 7]], 20, Sampler(), tracker)
    assert len(tracker.pushed) == 3 and all(len(t) == 1 for t in tracker.pushed)


@pytest.mark.parametrize("steps", [0, 2.5, "4"])
def test_decode_steps_must_be_a_positive_integer(okm_files, steps):
    """2.5 was a TypeError deep in the engine; every bad value is refused before loading."""
    with pytest.raises(UsageError, match="decode_steps must be a positive integer"):
        load_model(okm_files["gpt2"], device="cpu", decode_steps=steps)


def test_compiled_decode_step_gives_the_same_tokens(loaded, with_engine, monkeypatch):
    """torch.compile traces the whole decode step as one graph (fullgraph), cache writes and
    all, and changes no token. aot_eager on the CPU, as the other CPU compile tests; Inductor
    compiles it in the GPU tests."""
    model = loaded["gpt2"]
    expected = tokens(model, PROMPTS[:2], max_tokens=6, temperature=0)
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **o: compile_(fn, backend="aot_eager", **o))
    with_engine(model, compile=True)
    assert tokens(model, PROMPTS[:2], max_tokens=6, temperature=0) == expected
    assert "compiled decode step" in model.engine.description


def test_compilation_is_set_aside_from_the_batchs_timings(loaded, with_engine, monkeypatch):
    """`okto infer --compile` reported "decode 0 tok/s": the first batch's decode time held
    the compilation. A step that takes a second to compile on its first call stands in."""
    import time

    def compile_(fn, **options):
        calls = []

        def step(*args):
            if not calls:
                time.sleep(1.0)
            calls.append(1)
            return fn(*args)

        return step

    monkeypatch.setattr(torch, "compile", compile_)
    model = with_engine(loaded["gpt2"], compile=True)
    first = model.generate(PROMPTS[:1], max_tokens=6, temperature=0)[0].stats
    assert first.setup_s >= 1.0 and first.ttft_s < 1.0 and first.decode_s < 1.0
    again = model.generate(PROMPTS[:1], max_tokens=6, temperature=0)[0].stats
    assert again.setup_s == 0.0  # the slot is warm


def test_decode_step_matmuls_stay_on_cublas():
    """Kernels that pass their probe run in prefill; the decode step keeps cuBLAS for its
    matmuls, and PyTorch for everything when it is compiled."""
    passed = ["linear", "layer_norm", "prefill_attention", "decode_attention"]
    prefill, decode, why = ops.phases(passed, compile=False)
    assert prefill == ["linear", "layer_norm", "prefill_attention"]
    assert decode == ["layer_norm", "decode_attention"]
    assert len(why) == 1 and why[0].startswith("linear in the decode step: cuBLAS")
    prefill, decode, why = ops.phases(passed, compile=True)
    assert prefill == ["linear", "layer_norm", "prefill_attention"] and decode == []
    assert "torch.compile" in why[0]
    assert ops.phases(["layer_norm"], compile=False) == (["layer_norm"], ["layer_norm"], [])


def test_cpu_plan_is_pytorch_everywhere(loaded):
    plan = loaded["llama"].engine.model.plan
    assert plan.prefill.kernels == plan.decode.kernels == () and plan.notes == ()
    assert plan.reasons == ("every op: PyTorch (okto's kernels are for CUDA devices)",)
    assert plan.decode.decode_mask is ops.decode_mask
    mask = ops.decode_mask(torch.tensor([2, 4]), 5, torch.float32)
    assert mask.shape == (2, 1, 1, 5)
    assert (mask[:, 0, 0] == 0).tolist() == [[True] * 2 + [False] * 3, [True] * 4 + [False]]


def test_a_step_that_cannot_compile_is_a_clear_error(loaded, with_engine, monkeypatch):

    def no_compiler(fn, **options):
        def fail(*args):
            raise torch._dynamo.exc.TorchDynamoException("no C++ compiler here\nmore detail")

        return fail

    monkeypatch.setattr(torch, "compile", no_compiler)
    model = with_engine(loaded["gpt2"], compile=True)
    with pytest.raises(
        RunError, match=r"could not compile the decode step .* no C\+\+ compiler here"
    ):
        model.generate(PROMPTS[0], max_tokens=3, temperature=0)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU, test_gpu.py probes the kernels")
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_every_kernel_passes_its_probe(kind, loaded, monkeypatch):
    """The probes plan() runs on CUDA, here through Triton's interpreter: every adapter calls
    its kernel right (norms with the residual, decode attention on the cache's layout)."""
    import okto.kernels

    monkeypatch.setenv("OKTO_KERNELS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    norm = "rms_norm" if kind == "llama" else "layer_norm"
    names = ("linear", norm, "prefill_attention", "decode_attention")
    spec = loaded[kind].engine.model.spec
    passed, notes, reasons = ops.probe(okto.kernels, names, spec, torch.float32, "cpu")
    assert (passed, notes) == (list(names), [])
    assert len(reasons) == len(names)
