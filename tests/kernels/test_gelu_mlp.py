"""okto's gelu_mlp op: GPT-2's MLP with the GELU in cuBLASLt's GEMM epilogues.

On a CPU the op runs its PyTorch steps (what it also does on a GPU for the erf form
or fp32); the GPU tests check the cuBLASLt path against float64 at GPT-2's sizes.
"""

from __future__ import annotations

import pytest
import torch

from okto.kernels import KernelError, cublaslt, gelu_mlp
from okto.kernels.ops import gelu_mlp as gelu_mlp_module
from okto.kernels.ops.gelu_mlp import gelu_mlp_reference
from tests.kernels.numerics import DEVICE, TOL, assert_fake_matches, rel_error
from tests.planner.util import count_calls

NAMES = ("x", "w_fc", "b_fc", "w_proj", "b_proj")


def _operands(tokens, width, hidden, out, dtype, device=DEVICE, bias=True, layout="in_out"):
    """x, w_fc, b_fc, w_proj, b_proj, all leaves needing gradients. `layout="out_in"` gives
    weights as transposed views of nn.Linear-style [out, in] storage."""

    def weight(n_in, n_out):
        w = torch.randn(n_in, n_out, dtype=torch.float64) / n_in**0.5
        if layout == "out_in":
            return w.t().contiguous().to(device, dtype).t().detach().requires_grad_()
        return w.to(device, dtype).requires_grad_()

    def vector(n):
        return (torch.randn(n, dtype=torch.float64) * 0.5).to(device, dtype).requires_grad_()

    x = torch.randn(*tokens, width, dtype=torch.float64).to(device, dtype).requires_grad_()
    w_fc, w_proj = weight(width, hidden), weight(hidden, out)
    b_fc, b_proj = (vector(hidden), vector(out)) if bias else (None, None)
    return x, w_fc, b_fc, w_proj, b_proj


def _check_against_float64(operands, approximate, tol):
    leaves = [t for t in operands if t is not None]
    y = gelu_mlp(*operands, approximate=approximate)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, leaves, dy)
    as64 = [None if t is None else t.detach().double().requires_grad_() for t in operands]
    y64 = gelu_mlp_reference(*as64, approximate=approximate)
    grads64 = torch.autograd.grad(y64, [t for t in as64 if t is not None], dy.double())
    assert y.dtype == operands[0].dtype and y.shape == y64.shape
    assert rel_error(y, y64) < tol
    names = [n for n, t in zip(NAMES, operands, strict=True) if t is not None]
    for name, grad, grad64 in zip(names, grads, grads64, strict=True):
        assert grad.dtype == operands[0].dtype
        assert rel_error(grad, grad64) < tol, name


@pytest.mark.parametrize("approximate", ["tanh", "none"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_matches_float64_at_odd_sizes(dtype, bias, approximate):
    operands = _operands((3, 7), 13, 29, 11, dtype, bias=bias)
    _check_against_float64(operands, approximate, TOL[dtype] * 4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_master_weights_get_fp32_gradients(dtype):
    """fp32 parameters with a 16-bit input (autocast's case): cast inside, the output in
    the input's dtype, the parameters' gradients in fp32."""
    x, *params = _operands((5, 7), 16, 40, 24, torch.float32)
    x16 = x.detach().to(dtype).requires_grad_()
    y = gelu_mlp(x16, *params)
    assert y.dtype == dtype
    grads = torch.autograd.grad(y.float().square().sum(), [x16, *params])
    assert [g.dtype for g in grads] == [dtype] + [torch.float32] * 4
    as64 = [t.detach().double().requires_grad_() for t in (x16, *params)]
    y64 = gelu_mlp_reference(*as64)
    grads64 = torch.autograd.grad(y64.square().sum(), as64)
    assert rel_error(y, y64) < TOL[dtype] * 4
    for grad, grad64 in zip(grads, grads64, strict=True):
        assert rel_error(grad, grad64) < TOL[dtype] * 4


def test_gradients_only_where_asked():
    """Frozen weights (LoRA, say) get no gradient; the others are unchanged."""
    x, w_fc, b_fc, w_proj, b_proj = _operands((9,), 8, 24, 8, torch.float32)
    full = torch.autograd.grad(gelu_mlp(x, w_fc, b_fc, w_proj, b_proj).sum(), [x, w_proj])
    w_fc.requires_grad_(False)
    b_fc.requires_grad_(False)
    b_proj.requires_grad_(False)
    y = gelu_mlp(x, w_fc, b_fc, w_proj, b_proj)
    y.sum().backward()
    assert w_fc.grad is None and b_fc.grad is None and b_proj.grad is None
    torch.testing.assert_close(x.grad, full[0])
    torch.testing.assert_close(w_proj.grad, full[1])


def test_fake_implementations_match():
    x, w_fc, b_fc, w_proj, b_proj = (t.detach() for t in _operands((6,), 8, 16, 8, torch.float32))
    op, backward = gelu_mlp_module._gelu_mlp_op, gelu_mlp_module._backward_op
    assert_fake_matches(op, x, w_fc, b_fc, w_proj, b_proj, "tanh")
    assert_fake_matches(op, x.half(), w_fc, b_fc, w_proj, b_proj, "tanh")  # master weights
    transposed = (w_fc.t().contiguous().t(), b_fc, w_proj.t().contiguous().t(), b_proj)
    assert_fake_matches(op, x.half(), *transposed, "tanh")
    y, z, h, *_ = op(x, w_fc, b_fc, w_proj, b_proj, "tanh")
    for needs in ([True] * 5, [False, True, False, True, False]):
        args = (y, x, z, h, w_fc, w_proj, "tanh", needs)
        assert_fake_matches(backward, *args, torch.float32)
        assert_fake_matches(backward, *args, torch.float64)


def test_compiles_in_one_graph():
    operands = _operands((2, 5), 8, 16, 8, torch.float32)
    compiled = torch.compile(gelu_mlp, backend="aot_eager", fullgraph=True)
    y = compiled(*operands)
    torch.testing.assert_close(y, gelu_mlp(*operands))
    leaves = [t for t in operands if t is not None]
    expected = torch.autograd.grad(gelu_mlp(*operands).sum(), leaves)
    for grad, want in zip(torch.autograd.grad(y.sum(), leaves), expected, strict=True):
        torch.testing.assert_close(grad, want)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda o: (o[0][..., :5], *o[1:]), "do not chain"),
        (lambda o: (*o[:2], o[2][:3], *o[3:]), "b_fc has shape"),
        (lambda o: (o[0].double(), *o[1:]), "dtype float64"),
        (lambda o: (o[0], o[1].half(), *o[2:]), "share one dtype"),
        (lambda o: (o[0].half(), *(t.double() for t in o[1:])), "share one dtype"),
        (lambda o: (o[0], o[1][None], *o[2:]), "2-D"),
    ],
)
def test_bad_inputs_are_refused(change, message):
    operands = [t.detach() for t in _operands((4,), 8, 16, 8, torch.float32)]
    with pytest.raises(KernelError, match=message):
        gelu_mlp(*change(operands))
    with pytest.raises(KernelError, match="approximate"):
        gelu_mlp(*operands, approximate="fast")


def test_native_mode_runs_plain_pytorch(monkeypatch):
    monkeypatch.setenv("OKTO_KERNELS", "native")
    calls = count_calls(monkeypatch, gelu_mlp_module, "_gelu_mlp_op")
    operands = _operands((4,), 8, 16, 8, torch.float32)
    torch.testing.assert_close(gelu_mlp(*operands), gelu_mlp_reference(*operands))
    assert not calls


@pytest.fixture
def epilogue_calls(monkeypatch):
    """Calls of each cuBLASLt entry point, by name."""
    return {
        name: count_calls(monkeypatch, cublaslt, name)
        for name in ("gelu_linear", "gelu_grad_matmul", "weight_grad")
    }


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["in_out", "out_in"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_cublaslt_epilogues_at_gpt2_sizes(epilogue_calls, dtype, layout):
    operands = _operands((4, 256), 768, 3072, 768, dtype, layout=layout)
    _check_against_float64(operands, "tanh", TOL[dtype])
    assert {name: len(calls) for name, calls in epilogue_calls.items()} == {
        "gelu_linear": 1,
        "gelu_grad_matmul": 1,
        "weight_grad": 2,
    }


@pytest.mark.gpu
def test_gpu_master_weights_under_autocast(epilogue_calls):
    """What the planner runs: bf16 autocast over fp32 parameters, fp32 gradients straight
    out of cuBLASLt's weight-gradient GEMMs."""
    x, *params = _operands((2, 512), 768, 3072, 768, torch.float32)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = gelu_mlp(x.to(torch.bfloat16), *params)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, params, dy)
    as64 = [t.detach().double().requires_grad_() for t in (x.to(torch.bfloat16), *params)]
    grads64 = torch.autograd.grad(gelu_mlp_reference(*as64), as64[1:], dy.double())
    for grad, grad64 in zip(grads, grads64, strict=True):
        assert grad.dtype == torch.float32
        assert rel_error(grad, grad64) < TOL[torch.bfloat16]
    assert len(epilogue_calls["weight_grad"]) == 2


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("hidden", "bias", "approximate", "fused"),
    [
        (1000, False, "tanh", True),  # no biases: GELU_AUX, plain weight-gradient GEMMs
        (1001, True, "tanh", False),  # a width cuBLASLt's saved Z cannot take
        (1024, True, "none", False),  # erf GELU: PyTorch's steps
    ],
)
def test_gpu_other_shapes_and_forms(epilogue_calls, hidden, bias, approximate, fused):
    dtype = torch.bfloat16
    operands = _operands((333,), 136, hidden, 72, dtype, bias=bias)
    _check_against_float64(operands, approximate, TOL[dtype])
    assert bool(epilogue_calls["gelu_linear"]) == fused


@pytest.mark.gpu
def test_gpu_captured_in_a_cuda_graph():
    """The training step replays as CUDA graphs: the cuBLASLt calls must capture."""
    operands = _operands((512,), 256, 1024, 256, torch.bfloat16)
    leaves = [t for t in operands if t is not None]
    dy = torch.randn(512, 256, device="cuda", dtype=torch.bfloat16)

    def run():
        return torch.autograd.grad(gelu_mlp(*operands), leaves, dy)

    expected = run()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        run()  # warm up on the capture stream
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = run()
    graph.replay()
    torch.cuda.synchronize()
    for got, want in zip(captured, expected, strict=True):
        torch.testing.assert_close(got, want)
