"""The GELU MLP op and the GEMM with the GELU backward in its epilogue, against float64.

On the CPU both run through the interpreter: with OKTO_GEMM=tma the fused TMA
epilogues, by default the unfused steps (torch's products, okto's
activation-gradient pass). On the GPU the same checks at GPT-2's MLP shape in bf16.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from okto.kernels import KernelError, gelu_mlp
from okto.kernels.ops import gelu_mlp as mlp_module
from okto.kernels.ops import gemm as gemm_module
from okto.kernels.ops.gelu_mlp import gelu_mlp_reference
from tests.kernels.numerics import DEVICE, TOL, assert_fake_matches, rel_error

APPROXIMATE = {"gelu_tanh": "tanh", "gelu": "none"}


def _weights(width, hidden, out, dtype, bias, device=DEVICE):
    w_fc = (torch.randn(width, hidden, device=device) / math.sqrt(width)).to(dtype)
    w_proj = (torch.randn(hidden, out, device=device) / math.sqrt(hidden)).to(dtype)
    b_fc = torch.randn(hidden, device=device).to(dtype) if bias else None
    b_proj = torch.randn(out, device=device).to(dtype) if bias else None
    return w_fc, b_fc, w_proj, b_proj


def _check_mlp(x, params, approximate, tol):
    """Output and every gradient of gelu_mlp against the float64 reference."""
    leaves = [t.detach().requires_grad_() if t is not None else None for t in (x, *params)]
    out = gelu_mlp(*leaves, approximate=approximate)
    dout = torch.randn_like(out)
    out.backward(dout)
    leaves64 = [t.detach().double().requires_grad_() if t is not None else None for t in leaves]
    want = gelu_mlp_reference(*leaves64, approximate=approximate)
    want.backward(dout.double())
    assert out.shape == want.shape and out.dtype == x.dtype
    assert rel_error(out, want) < tol
    for got, ref in zip(leaves, leaves64, strict=True):
        if got is not None:
            assert got.grad.shape == got.shape and rel_error(got.grad, ref.grad) < tol


@pytest.fixture
def fused_launches(monkeypatch):
    """The activation-gradient codes the TMA kernel was launched with."""
    codes = []
    real = gemm_module._launch_tma

    def spy(*args, act_grad=0, **kwargs):
        codes.append(act_grad)
        return real(*args, act_grad=act_grad, **kwargs)

    monkeypatch.setattr(gemm_module, "_launch_tma", spy)
    return codes


@pytest.mark.parametrize("path", ["tma", "auto"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_gelu_mlp_forward_backward_odd_sizes(monkeypatch, fused_launches, path, bias, approximate):
    monkeypatch.setenv("OKTO_GEMM", path)
    x = torch.randn(2, 37, 24, device=DEVICE).half()  # 74 rows: ragged against every tile
    params = _weights(24, 40, 16, torch.float16, bias)
    _check_mlp(x, params, approximate, TOL[torch.float16])
    if path == "tma" or DEVICE == "cuda":
        code = gemm_module.ACTIVATIONS["gelu_tanh" if approximate == "tanh" else "gelu"]
        assert fused_launches == [0, code]  # c_fc's forward; c_proj's input gradient, fused
    else:
        assert fused_launches == []


def test_gelu_mlp_fp32_and_transposed_weights():
    """fp32 runs unfused everywhere; nn.Linear-layout weights arrive as transposed views."""
    x = torch.randn(19, 24, device=DEVICE)
    w_fc, b_fc, w_proj, b_proj = _weights(24, 48, 24, torch.float32, True)
    params = (w_fc.T.contiguous().T, b_fc, w_proj.T.contiguous().T, b_proj)
    _check_mlp(x, params, "tanh", 1e-5)


@pytest.mark.parametrize("activation", ["gelu_tanh", "gelu"])
def test_gelu_grad_gemm_every_output(monkeypatch, activation):
    """dZ, gelu(Z) and the bias gradient from one GEMM (outputs are poisoned: all written)."""
    monkeypatch.setenv("OKTO_GEMM", "tma")
    m, k, n = 83, 40, 56
    dy = torch.randn(m, k, device=DEVICE).half()
    b = (torch.randn(n, k, device=DEVICE) / math.sqrt(k)).half().T  # column-major, as w.t()
    z = torch.randn(m, 2 * n, device=DEVICE).half()[:, ::2]  # strided Z
    dz, h, dbias = gemm_module.gelu_grad_gemm(dy, b, z, activation, True, True)
    approximate = APPROXIMATE[activation]
    want = torch.ops.aten.gelu_backward(
        dy.double() @ b.double(), z.double(), approximate=approximate
    )
    assert rel_error(dz, want) < TOL[torch.float16]
    assert rel_error(h, F.gelu(z.double(), approximate=approximate)) < TOL[torch.float16]
    assert rel_error(dbias, want.sum(0)) < TOL[torch.float16]
    dz2, h2, dbias2 = gemm_module.gelu_grad_gemm(dy, b, z, activation, False, False)
    assert torch.equal(dz2, dz) and h2.numel() == 0 and dbias2.numel() == 0


@pytest.mark.parametrize("path", ["tma", "auto"])
def test_fakes_agree_with_the_ops(monkeypatch, path):
    monkeypatch.setenv("OKTO_GEMM", path)
    x = torch.randn(10, 16, device=DEVICE).half()
    w_fc, b_fc, w_proj, _ = _weights(16, 32, 8, torch.float16, True)
    assert_fake_matches(mlp_module._gelu_mlp_op, x, w_fc, b_fc, w_proj, None, "tanh")
    dy, z = torch.randn(10, 8, device=DEVICE).half(), torch.randn(10, 32, device=DEVICE).half()
    for bias_grad, need_h in [(True, True), (False, False)]:
        assert_fake_matches(mlp_module._input_grad_op, dy, w_proj, z, "none", bias_grad, need_h)


def test_torch_compile_fullgraph_forward_backward(monkeypatch):
    monkeypatch.setenv("OKTO_GEMM", "tma")
    x = torch.randn(2, 9, 16, device=DEVICE).half().requires_grad_()
    params = [t.requires_grad_() for t in _weights(16, 32, 16, torch.float16, True)]

    def step(x, *params):
        return gelu_mlp(x, *params).float().square().sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    grads = torch.autograd.grad(compiled(x, *params), (x, *params))
    expected = torch.autograd.grad(step(x, *params), (x, *params))
    for g, e in zip(grads, expected, strict=True):
        assert rel_error(g, e) < 1e-6


def test_errors_name_the_problem():
    x = torch.randn(4, 8)
    w_fc, b_fc, w_proj, b_proj = _weights(8, 16, 8, torch.float32, True, device="cpu")
    with pytest.raises(KernelError, match="do not chain"):
        gelu_mlp(x, w_fc, b_fc, w_proj.T, b_proj)
    with pytest.raises(KernelError, match="b_fc has shape"):
        gelu_mlp(x, w_fc, b_proj, w_proj, b_proj)
    with pytest.raises(KernelError, match="approximate="):
        gelu_mlp(x, w_fc, b_fc, w_proj, b_proj, approximate="erf")
    with pytest.raises(KernelError, match="one dtype"):
        gelu_mlp(x.half(), w_fc, b_fc, w_proj, b_proj)
    with pytest.raises(KernelError, match="TMA"):
        gemm_module.gelu_grad_gemm(x, w_proj.T, torch.randn(4, 16), "gelu", True, True)


def test_native_mode_is_the_reference(monkeypatch):
    monkeypatch.setenv("OKTO_KERNELS", "native")
    x = torch.randn(5, 8, dtype=torch.float64)
    params = _weights(8, 16, 8, torch.float64, True, device="cpu")
    assert torch.equal(gelu_mlp(x, *params), gelu_mlp_reference(x, *params))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_gpt2_mlp_shape(fused_launches, dtype):
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("the fused epilogues need the TMA kernel (sm_90+)")
    x = torch.randn(4, 1024, 768, device="cuda").to(dtype)
    _check_mlp(x, _weights(768, 3072, 768, dtype, True, device="cuda"), "tanh", TOL[dtype])
    assert fused_launches == [0, gemm_module.ACTIVATIONS["gelu_tanh"]]


@pytest.mark.gpu
def test_gpu_every_tma_config_in_the_gradient_epilogue(monkeypatch):
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("TMA kernels need sm_90+")
    from tests.kernels.test_gemm import _each_config

    m, k, n = 1000, 520, 776
    dy = torch.randn(m, k, device="cuda").bfloat16()
    b = (torch.randn(n, k, device="cuda") / math.sqrt(k)).bfloat16().T
    z = torch.randn(m, n, device="cuda").bfloat16()
    want = torch.ops.aten.gelu_backward(dy.double() @ b.double(), z.double(), approximate="tanh")

    def run():
        dz, h, dbias = gemm_module.gelu_grad_gemm(dy, b, z, "gelu_tanh", True, True)
        assert rel_error(dz, want) < TOL[torch.bfloat16]
        assert rel_error(dbias, want.sum(0)) < TOL[torch.bfloat16]
        assert rel_error(h, F.gelu(z.double(), approximate="tanh")) < TOL[torch.bfloat16]

    _each_config(monkeypatch, gemm_module._gemm_tma_kernel, run)
