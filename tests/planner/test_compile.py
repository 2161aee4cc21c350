"""torch.compile over okto's patched models, and over plain models in the same process.

`torch.compile(model)` reads the source file of the module's bound `forward`
before compiling anything; a forward that was a method over a
`functools.partial` made dynamo raise an AssertionError there. The CPU tests run
the aot_eager backend (the whole dynamo and AOT-autograd path, no code
generation: inductor takes ~40 s on a 2-core CPU); the GPU test runs inductor.
"""

from __future__ import annotations

import pytest
import torch

import okto
from okto.kernels import hf_attention
from okto.planner import build_plan
from tests.planner.test_patching import FUSED, assert_same_step, batch, step
from tests.planner.util import H100, count_calls, gpt2, llama

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _compiled_step(model, ids, **options):
    return step(model, ids, torch.compile(model, backend="aot_eager", **options))


def test_plain_model_compiles_beside_a_patched_one(monkeypatch):
    """What benchmarks/train.py does: okto patches one model, then a plain Hugging Face
    model is compiled in the same process; it runs while the other is patched and after."""
    monkeypatch.delenv("OKTO_KERNELS", raising=False)
    ids = batch()
    plain = gpt2()
    expected = step(plain, ids)
    other = gpt2()
    patches = build_plan(FUSED, machine=H100, model=other).apply(other)
    step(other, ids)
    compiled = torch.compile(plain, backend="aot_eager")
    assert_same_step(expected, step(plain, ids, compiled))
    patches.undo()
    assert_same_step(expected, step(plain, ids, compiled))


def test_patched_forwards_are_plain_functions(monkeypatch):
    """Every forward okto installs has a source file, so dynamo's trace rules accept it."""
    import inspect

    monkeypatch.delenv("OKTO_KERNELS", raising=False)
    model = gpt2()
    with build_plan(FUSED, machine=H100, model=model).apply(model) as patches:
        assert len(patches) > 0
        forwards = [m.__dict__["forward"] for m in model.modules() if "forward" in m.__dict__]
        assert len(forwards) > 1
        for forward in forwards:
            assert inspect.getfile(forward).endswith("forwards.py")
        # generate() and trainers read the LM's parameters off the patched forward
        assert "labels" in inspect.signature(model.forward).parameters


# Where each family's attention reaches okto: GPT-2's packed kernel on c_attn's output,
# Llama's kernel through transformers' attention hook.
ATTENTION_ENTRY = {"gpt2": (okto.kernels, "packed_attention"), "llama": (hf_attention, "attention")}


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_patched_model_compiles_in_one_graph(monkeypatch, family):
    """okto-kernels-compile: the model on okto's Triton kernels (the interpreter on a CPU)
    under torch.compile with fullgraph: the custom ops are traced without a graph break,
    every layer's attention reaches okto's kernel (no mask built while tracing sends it to
    SDPA), and loss and gradients match the unpatched model."""
    monkeypatch.setenv("OKTO_KERNELS", "triton")
    model = (gpt2() if family == "gpt2" else llama()).to(DEVICE)
    ids = batch(device=DEVICE)
    expected = step(model, ids)
    plan = build_plan(okto.parse("", "t.okt"), model=model)  # the default plan: fused on
    assert plan.layers["cross_entropy"].fused
    calls = count_calls(monkeypatch, *ATTENTION_ENTRY[family])  # traced calls
    with plan.apply(model):
        actual = _compiled_step(model, ids, fullgraph=True)
    assert len(calls) == model.config.num_hidden_layers
    assert actual[1] is None  # the fused loss made no logits
    assert_same_step(expected, actual)


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_patched_model_compiles_with_inductor_on_the_gpu(monkeypatch, family):
    """okto-kernels-compile as benchmarks/train.py runs it: bf16 autocast, inductor, one
    graph, every layer's attention on okto's kernel."""
    monkeypatch.delenv("OKTO_KERNELS", raising=False)
    model = (gpt2() if family == "gpt2" else llama()).cuda()
    ids = batch(device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        expected = step(model, ids)
        calls = count_calls(monkeypatch, *ATTENTION_ENTRY[family])
        with build_plan(okto.parse("", "t.okt"), model=model).apply(model):
            actual = step(model, ids, torch.compile(model, fullgraph=True))
    assert len(calls) == model.config.num_hidden_layers
    assert_same_step(expected, actual, tol={"rtol": 5e-2, "atol": 5e-2})


COMPILED_PLAN = okto.parse("OPTIMIZE { compile: true }", "t.okt")


def test_compiled_plan_runs_gpt2_mlp_as_one_op(monkeypatch):
    """OPTIMIZE.compile's plan leaves GPT-2's GEMMs to cuBLAS and runs each MLP as okto's
    gelu_mlp op (GELU in cuBLASLt's epilogues on a GPU), traced in one graph."""
    monkeypatch.delenv("OKTO_KERNELS", raising=False)
    model = gpt2()
    ids = batch()
    expected = step(model, ids)
    plan = build_plan(COMPILED_PLAN, machine=H100, model=model)
    assert plan.layers["gemm"].impl == "native" and plan.layers["activation"].fused
    calls = count_calls(monkeypatch, okto.kernels, "gelu_mlp")
    with plan.apply(model):
        actual = _compiled_step(model, ids, fullgraph=True)
    assert len(calls) == model.config.num_hidden_layers
    assert_same_step(expected, actual)


@pytest.mark.gpu
def test_compiled_plan_with_cublaslt_epilogues_on_the_gpu(monkeypatch):
    """The same plan as `okto train` compiles it on a GPU: bf16 autocast, inductor, the
    MLPs' GELU in cuBLASLt's epilogues."""
    from okto.kernels import cublaslt

    monkeypatch.delenv("OKTO_KERNELS", raising=False)
    model = gpt2().cuda()
    ids = batch(device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        expected = step(model, ids)
        calls = count_calls(monkeypatch, cublaslt, "gelu_grad_matmul")
        with build_plan(COMPILED_PLAN, model=model).apply(model):
            actual = step(model, ids, torch.compile(model, fullgraph=True))
    assert len(calls) == model.config.num_hidden_layers
    assert_same_step(expected, actual, tol={"rtol": 5e-2, "atol": 5e-2})
