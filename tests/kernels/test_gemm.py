"""GEMM and the fused linear op against float64 PyTorch, in the interpreter and on the GPU.

Inputs are low-precision tensors; the oracle runs the same values in float64.
Operands are scaled by 1/sqrt(K) so pre-activations are O(1) and GELU's curved
part is exercised. With fp32 accumulation the error is dominated by the final
rounding to the output dtype, so TOL applies at these sizes; tf32 rounds every
product to a 10-bit mantissa and gets its own tolerance.
"""

import math

import numpy as np
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from okto.kernels import KernelError, linear, matmul, matmul_fp16
from okto.kernels.ops import gemm as gemm_module
from okto.kernels.ops.gemm import gemm, gemm_reference
from tests.kernels.numerics import DEVICE, TOL, rel_error

ACTIVATIONS = ["none", "gelu", "gelu_tanh"]
TF32_TOL = 5e-3  # 10-bit mantissa products, fp32 sums


def _operands(a_shape, b_shape, dtype, device=DEVICE):
    k = a_shape[-1]
    a = torch.randn(a_shape, device=device).to(dtype)
    b = (torch.randn(b_shape, device=device) / math.sqrt(k)).to(dtype)
    return a, b


def _check_against_float64(fn, ref, inputs, tol, grad_tol=None):
    """Run fn on `inputs` (leaves), ref on float64 copies; compare outputs and gradients."""
    leaves = [t.detach().requires_grad_() if t is not None else None for t in inputs]
    out = fn(*leaves)
    dout = torch.randn_like(out)
    out.backward(dout)
    leaves64 = [t.detach().double().requires_grad_() if t is not None else None for t in leaves]
    out64 = ref(*leaves64)
    out64.backward(dout.double())
    assert out.dtype == inputs[0].dtype and out.shape == out64.shape
    assert rel_error(out, out64) < tol
    for got, want in zip(leaves, leaves64, strict=True):
        if got is not None:
            assert got.grad.shape == got.shape
            assert rel_error(got.grad, want.grad) < (grad_tol or tol)


@pytest.fixture
def tma_launches(monkeypatch):
    """Counts launches of the TMA kernel."""
    calls = []
    real = gemm_module._launch_tma

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(gemm_module, "_launch_tma", spy)
    return calls


# ---------------------------------------------------------------------------
# Interpreter (and GPU): small odd sizes


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_matmul_odd_sizes_forward_backward(dtype):
    a, b = _operands((37, 71), (71, 53), dtype)
    _check_against_float64(matmul, torch.matmul, [a, b], TOL[dtype])


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_every_epilogue_forward_backward(dtype, bias, activation, residual):
    a, b = _operands((37, 71), (71, 53), dtype)
    bias_t = torch.randn(53, device=DEVICE).to(dtype) if bias else None
    res_t = torch.randn(37, 53, device=DEVICE).to(dtype) if residual else None

    def fn(a, b, bias, res):
        return gemm(a, b, bias, res, activation)

    def ref(a, b, bias, res):
        return gemm_reference(a, b, bias, res, activation)

    _check_against_float64(fn, ref, [a, b, bias_t, res_t], TOL[dtype])


@pytest.mark.parametrize(
    "a_col_major, b_col_major, batch",
    [(False, False, 0), (False, True, 0), (True, False, 0), (True, True, 0), (False, True, 2)],
)
def test_tma_kernel_every_layout(monkeypatch, tma_launches, a_col_major, b_col_major, batch):
    """The Hopper kernel (persistent loop, split epilogue, descriptors) in the interpreter."""
    monkeypatch.setenv("OKTO_GEMM", "tma")
    m, k, n = 40, 72, 56  # fp16 rows of 16-byte multiples, as TMA needs; tiles still ragged
    a = torch.randn(k, m).T if a_col_major else torch.randn(m, k)
    b = torch.randn(n, k).T if b_col_major else torch.randn(k, n)
    a, b = a.to(torch.float16), (b / math.sqrt(k)).to(torch.float16)
    bias = torch.randn(n).to(torch.float16)
    res = torch.randn(m, n).to(torch.float16)
    if batch:  # [B, M/B, K] @ [K, N]: rows merge into one TMA GEMM
        a, res = a.reshape(batch, m // batch, k), res.reshape(batch, m // batch, n)

    def fn(a, b, bias, res):
        return gemm(a, b, bias, res, "gelu_tanh")

    def ref(a, b, bias, res):
        return gemm_reference(a, b, bias, res, "gelu_tanh")

    _check_against_float64(fn, ref, [a, b, bias, res], TOL[torch.float16])
    assert len(tma_launches) == 3  # forward, dA, dB


def test_tma_split_k_sums_every_slice(monkeypatch, tma_launches):
    """Split-K (few output tiles, long K): slices of equal length, the last past K."""
    monkeypatch.setenv("OKTO_GEMM", "tma")
    monkeypatch.setattr(gemm_module, "_split_k", lambda m, n, k, sms: 3)
    a, b = _operands((40, 72), (72, 56), torch.float16)  # 5 K steps of 16: slices 2, 2, 1+pad
    _check_against_float64(matmul, torch.matmul, [a.T.contiguous().T, b], TOL[torch.float16])
    assert len(tma_launches) == 3


def test_split_k_only_where_output_tiles_are_too_few():
    sms = 132  # H100 SXM
    assert gemm_module._split_k(768, 3072, 16384, sms) > 1  # GPT-2 weight gradients
    assert gemm_module._split_k(768, 768, 16384, sms) > 1
    assert gemm_module._split_k(768, 50304, 16384, sms) == 1  # enough tiles already
    assert gemm_module._split_k(16384, 3072, 768, sms) == 1  # short K
    assert gemm_module._split_k(8192, 8192, 8192, sms) == 1


def test_tma_falls_back_when_strides_do_not_fit(monkeypatch, tma_launches):
    monkeypatch.setenv("OKTO_GEMM", "tma")
    a, b = _operands((37, 71), (71, 53), torch.float16)  # rows of 142 bytes: not 16-aligned
    assert rel_error(matmul(a, b), a.double() @ b.double()) < TOL[torch.float16]
    assert tma_launches == []


@pytest.mark.parametrize("layout", ["out_in", "in_out"])
def test_linear_backward_stays_on_the_tma_kernel(monkeypatch, tma_launches, layout):
    """Forward, dX and dW of both weight layouts reach the TMA kernel with no copies, and
    the weight gradient comes out in the weight's own layout (no transposing copy)."""
    monkeypatch.setenv("OKTO_GEMM", "tma")
    simple = []
    monkeypatch.setattr(gemm_module, "_launch_simple", lambda *a: simple.append(a))
    x = torch.randn(40, 72).to(torch.float16)  # 16-byte rows, ragged tiles
    w_in_out = (torch.randn(72, 56) / math.sqrt(72)).to(torch.float16)
    weight = w_in_out.T.contiguous() if layout == "out_in" else w_in_out
    bias = torch.randn(56).to(torch.float16)

    def fn(x, weight, bias):
        return linear(x, weight, bias, "gelu_tanh", weight_layout=layout)

    def ref(x, weight, bias):
        w = weight.T if layout == "out_in" else weight
        return torch.nn.functional.gelu(x @ w + bias, approximate="tanh")

    leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
    fn(*leaves).backward(torch.randn(40, 56).to(torch.float16))
    assert len(tma_launches) == 3 and simple == []
    assert leaves[1].grad.stride() == weight.stride()
    _check_against_float64(fn, ref, [x, weight, bias], TOL[torch.float16])


def test_backward_allocates_no_zeros_for_unused_outputs():
    """The pre-activation output is not differentiable: autograd must not build an [M, N]
    tensor of zeros as its gradient on every backward (set_materialize_grads(False))."""
    from torch.profiler import ProfilerActivity, profile

    a, b = _operands((37, 71), (71, 53), torch.float32)
    bias = torch.randn(53, device=DEVICE)
    leaves = [t.clone().requires_grad_() for t in (a, b, bias)]
    out = gemm(*leaves, None, "gelu_tanh")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out.backward(torch.randn_like(out))
    assert not [e.name for e in prof.events() if e.name == "aten::zeros"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_transposed_and_strided_inputs(dtype):
    m, k, n = 37, 71, 53
    a = torch.randn(k, m, device=DEVICE).to(dtype).T  # column-major
    big = torch.randn(2 * k, 3 * n, device=DEVICE).to(dtype) / math.sqrt(k)
    b = big[::2, ::3]  # no unit stride at all
    _check_against_float64(matmul, torch.matmul, [a, b], TOL[dtype])


@pytest.mark.parametrize("bias_view", ["expanded", "sliced"])
def test_bias_of_any_stride(bias_view):
    """An expanded ([1] -> [N], stride 0) or sliced bias was read as if contiguous."""
    x, w = _operands((5, 19), (19, 7), torch.float32)
    full = torch.randn(1 if bias_view == "expanded" else 14, device=DEVICE)
    bias = full.expand(7) if bias_view == "expanded" else full[::2]

    def fused(x, w, bias):
        return linear(x, w, bias, activation="gelu", weight_layout="in_out")

    def reference(x, w, bias):
        return torch.nn.functional.gelu(x @ w + bias)

    _check_against_float64(fused, reference, [x, w, bias], TOL[torch.float32])


def test_strided_inputs_reach_the_kernel_without_copies(monkeypatch):
    seen = []
    real = gemm_module._launch_simple

    def spy(a3, b3, *rest):
        seen.append((a3.data_ptr(), b3.data_ptr()))
        return real(a3, b3, *rest)

    monkeypatch.setattr(gemm_module, "_launch_simple", spy)
    a = torch.randn(71, 37).T
    b = torch.randn(142, 159)[::2, ::3]
    matmul(a, b)
    assert seen == [(a.data_ptr(), b.data_ptr())]


@pytest.mark.parametrize(
    "a_shape, b_shape, a_permuted",
    [
        ((2, 37, 71), (71, 53), False),  # rows merge: one tall GEMM
        ((2, 37, 71), (71, 53), True),  # rows do not merge: batched kernel, B broadcast
        ((2, 37, 71), (2, 71, 53), False),
        ((37, 71), (2, 71, 53), False),  # A broadcast over B's batch
    ],
)
def test_batched_forward_backward(a_shape, b_shape, a_permuted):
    dtype = torch.float16
    a, b = _operands(a_shape, b_shape, dtype)
    if a_permuted:
        a = a.transpose(0, 1).contiguous().transpose(0, 1)
    out_shape = torch.matmul(a, b).shape
    bias = torch.randn(out_shape[-1], device=DEVICE).to(dtype)
    res = torch.randn(out_shape, device=DEVICE).to(dtype)

    def fn(a, b, bias, res):
        return gemm(a, b, bias, res, "gelu")

    def ref(a, b, bias, res):
        return gemm_reference(a, b, bias, res, "gelu")

    _check_against_float64(fn, ref, [a, b, bias, res], TOL[dtype])


@pytest.mark.parametrize(
    "a_shape, b_shape",
    [
        ((71,), (71, 53)),
        ((37, 71), (71,)),
        ((71,), (71,)),
        ((2, 3, 37, 71), (2, 3, 71, 53)),  # [B, H, S, D] style
        ((2, 1, 37, 71), (1, 3, 71, 53)),  # both broadcast
        ((1, 37, 71), (3, 71, 53)),  # 3-D with a batch of one
        ((37, 71), (2, 3, 71, 53)),
        ((71,), (2, 3, 71, 53)),
        ((2, 3, 37, 71), (71,)),
    ],
)
def test_matmul_takes_torch_matmul_shapes(a_shape, b_shape):
    """matmul refused 1-D and 4-D operands that `torch.matmul` (and `a @ b`) take: they are
    promoted and their batch dimensions broadcast and flattened into the kernel's one."""
    a, b = _operands(a_shape, b_shape, torch.float32)
    _check_against_float64(matmul, torch.matmul, [a, b], TOL[torch.float32])


def test_backward_recomputes_an_unsaved_preactivation_and_takes_broadcast_grads():
    a, b = _operands((2, 37, 71), (71, 53), torch.float32)
    bias = torch.randn(53, device=DEVICE)
    leaves = [t.clone().requires_grad_() for t in (a, b, bias)]
    out, preact = gemm_module._gemm_op(*leaves, None, "gelu_tanh", False)  # nothing saved
    assert preact.numel() == 0
    out.sum().backward()  # dY arrives as an expanded tensor of stride 0
    leaves64 = [t.double().requires_grad_() for t in (a, b, bias)]
    gemm_reference(*leaves64, None, "gelu_tanh").sum().backward()
    for got, want in zip(leaves, leaves64, strict=True):
        assert rel_error(got.grad, want.grad) < TOL[torch.float32]


@pytest.fixture(params=[False, True], ids=["exact", "tf32"])
def allow_tf32(request):
    """Sets torch's TF32 switch for one test and restores it. Not `monkeypatch`: since
    pytest 9.2 it deletes, on undo, an attribute it did not find in the object's
    `__dict__`, and `allow_tf32` lives behind `__getattr__`."""
    matmul_backend = torch.backends.cuda.matmul
    before = matmul_backend.allow_tf32
    matmul_backend.allow_tf32 = request.param
    yield request.param
    matmul_backend.allow_tf32 = before


def test_fp32_exact_and_tf32(allow_tf32):
    a, b = _operands((37, 71), (71, 53), torch.float32)
    tol = TF32_TOL if allow_tf32 and DEVICE == "cuda" else TOL[torch.float32]
    _check_against_float64(matmul, torch.matmul, [a, b], tol)


def test_empty_inner_dimension_gives_the_epilogue_of_zero():
    a, b = torch.randn(5, 0, device=DEVICE), torch.randn(0, 16, device=DEVICE)
    bias, res = torch.randn(16, device=DEVICE), torch.randn(5, 16, device=DEVICE)
    out = gemm(a, b, bias, res, "gelu_tanh")
    ref = gemm_reference(a.double(), b.double(), bias.double(), res.double(), "gelu_tanh")
    assert rel_error(out, ref) < TOL[torch.float32]
    assert matmul(torch.randn(0, 8, device=DEVICE), torch.randn(8, 4, device=DEVICE)).shape == (
        0,
        4,
    )


@pytest.mark.parametrize("layout", ["out_in", "in_out"])
@pytest.mark.parametrize("x_shape", [(71,), (2, 3, 71), (2, 2, 3, 71)])
def test_linear_layouts_and_leading_dims(layout, x_shape):
    dtype = torch.float16
    x = torch.randn(x_shape, device=DEVICE).to(dtype)
    w_in_out = (torch.randn(71, 24, device=DEVICE) / math.sqrt(71)).to(dtype)
    weight = w_in_out.T.contiguous() if layout == "out_in" else w_in_out
    bias = torch.randn(24, device=DEVICE).to(dtype)
    res = torch.randn(*x_shape[:-1], 24, device=DEVICE).to(dtype)

    def fn(x, weight, bias, res):
        return linear(x, weight, bias, "gelu_tanh", res, weight_layout=layout)

    def ref(x, weight, bias, res):
        w = weight.T if layout == "out_in" else weight
        return torch.nn.functional.gelu(x @ w + bias, approximate="tanh") + res

    _check_against_float64(fn, ref, [x, weight, bias, res], TOL[dtype])


def test_matmul_fp16_casts_and_takes_numpy():
    a, b = np.random.randn(9, 17), np.random.randn(17, 5)
    out = matmul_fp16(a, b)
    assert isinstance(out, np.ndarray) and out.dtype == np.float16
    ref = a.astype(np.float16).astype(np.float64) @ b.astype(np.float16).astype(np.float64)
    assert rel_error(torch.from_numpy(out), torch.from_numpy(ref)) < TOL[torch.float16]
    t = matmul_fp16(torch.randn(9, 17, device=DEVICE), torch.randn(17, 5, device=DEVICE))
    assert t.dtype == torch.float16


def test_native_mode_uses_the_reference(monkeypatch):
    monkeypatch.setenv("OKTO_KERNELS", "native")
    a, b = torch.randn(4, 6), torch.randn(6, 3)
    assert torch.equal(matmul(a, b), a @ b)


def test_fake_implementations_agree_with_the_kernels():
    cases = [
        ((5, 16), (16, 8), True, "gelu_tanh", True),
        ((2, 5, 16), (16, 8), False, "none", False),
        ((2, 5, 16), (2, 16, 8), True, "gelu", False),
        ((5, 16), (2, 16, 8), False, "gelu", True),
    ]
    for a_shape, b_shape, with_bias, activation, save in cases:
        a, b = torch.randn(a_shape), torch.randn(b_shape).mT.contiguous().mT
        bias = torch.randn(b_shape[-1]) if with_bias else None
        real = gemm_module._gemm_op(a, b, bias, None, activation, save)
        with FakeTensorMode() as mode:
            fake_args = [mode.from_tensor(t) if t is not None else None for t in (a, b, bias)]
            fake = gemm_module._gemm_op(*fake_args, None, activation, save)
        for r, f in zip(real, fake, strict=True):
            assert (f.shape, f.dtype, f.stride()) == (r.shape, r.dtype, r.stride())
    dy, z = torch.randn(6, 8), torch.randn(6, 8)
    for activation, has_bias in [("gelu", True), ("none", True), ("gelu_tanh", False)]:
        real = gemm_module._act_grad_op(dy, z, activation, has_bias)
        with FakeTensorMode() as mode:
            fake = gemm_module._act_grad_op(
                mode.from_tensor(dy), mode.from_tensor(z), activation, has_bias
            )
        for r, f in zip(real, fake, strict=True):
            assert (f.shape, f.dtype) == (r.shape, r.dtype)


def test_torch_compile_fullgraph_forward_backward():
    x = torch.randn(2, 5, 24, device=DEVICE, requires_grad=True)
    w = (torch.randn(16, 24, device=DEVICE) / 5).requires_grad_()
    bias = torch.randn(16, device=DEVICE, requires_grad=True)
    res = torch.randn(2, 5, 16, device=DEVICE, requires_grad=True)

    def step(x, w, bias, res):
        return (linear(x, w, bias, "gelu_tanh", res) ** 2).sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    grads = torch.autograd.grad(compiled(x, w, bias, res), (x, w, bias, res))
    expected = torch.autograd.grad(step(x, w, bias, res), (x, w, bias, res))
    for g, e in zip(grads, expected, strict=True):
        assert rel_error(g, e) < 1e-6


def test_errors_name_the_problem():
    a, b = torch.randn(4, 6), torch.randn(6, 3)
    with pytest.raises(KernelError, match="inner dimensions"):
        matmul(a, torch.randn(5, 3))
    with pytest.raises(KernelError, match="do not broadcast"):
        matmul(torch.randn(2, 4, 6), torch.randn(3, 6, 3))
    with pytest.raises(KernelError, match="batch sizes"):
        gemm(torch.randn(2, 4, 6), torch.randn(3, 6, 3))
    with pytest.raises(KernelError, match="one dimension or more"):
        matmul(torch.tensor(2.0), b)
    with pytest.raises(KernelError, match=r"\(6,\) @ \(5, 3\)"):
        matmul(torch.randn(6), torch.randn(5, 3))
    with pytest.raises(KernelError, match="dtype"):
        matmul(a.half(), b)
    with pytest.raises(KernelError, match="supported"):
        matmul(a.double(), b.double())
    with pytest.raises(KernelError, match="different devices"):
        matmul(a, b.to("meta"))
    with pytest.raises(KernelError, match="bias has shape"):
        gemm(a, b, bias=torch.randn(4))
    with pytest.raises(KernelError, match="residual has shape"):
        gemm(a, b, residual=torch.randn(3, 4))
    with pytest.raises(KernelError, match="activation"):
        linear(a, b.T, activation="relu")
    with pytest.raises(KernelError, match="weight_layout"):
        linear(a, b, weight_layout="rows")
    with pytest.raises(KernelError, match="features"):
        linear(a, b)  # nn.Linear layout expects [out, in] = [3, 6]


def test_unknown_path_is_refused(monkeypatch):
    monkeypatch.setenv("OKTO_GEMM", "fast")
    with pytest.raises(KernelError, match="OKTO_GEMM"):
        matmul(torch.randn(4, 6), torch.randn(6, 3))


# ---------------------------------------------------------------------------
# GPU: every autotuning configuration, real sizes, bf16, the Hopper path, inductor
#
# Autotuning keeps one configuration per shape class, so a configuration that
# miscompiles would only show when it wins; the first two tests run every one
# (each compile costs seconds, so on one layout and dtype per case). The other GPU
# tests take the first configuration untimed (OKTO_AUTOTUNE=first, conftest.py).


def _each_config(monkeypatch, kernel, run, configs=None):
    """Call run() with the autotuner pinned to each of its configurations (or `configs`) in turn."""
    from triton.runtime.errors import OutOfResources

    ran = []
    for cfg in list(kernel.configs if configs is None else configs):
        monkeypatch.setattr(kernel, "configs", [cfg])
        try:
            run()
        except OutOfResources:  # e.g. fp32 tiles whose stages exceed shared memory
            continue
        ran.append(cfg)
    assert ran, "no configuration fits this GPU"


@pytest.mark.gpu
@pytest.mark.parametrize(("dtype", "col_major"), [(torch.float16, False), (torch.bfloat16, True)])
def test_gpu_every_tma_config(monkeypatch, tma_launches, dtype, col_major):
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("TMA kernels need sm_90+")
    m, k, n = 1000, 520, 776  # ragged against every tile; rows 16-byte aligned
    a = torch.randn(k, m, device="cuda").T if col_major else torch.randn(m, k, device="cuda")
    b = torch.randn(n, k, device="cuda").T if col_major else torch.randn(k, n, device="cuda")
    a, b = a.to(dtype), (b / math.sqrt(k)).to(dtype)
    bias = torch.randn(n, device="cuda").to(dtype)
    res = torch.randn(m, n, device="cuda").to(dtype)
    args64 = [t.double() for t in (a, b, bias)]
    want_pre = gemm_reference(*args64)
    want = gemm_reference(*args64, res.double(), "gelu_tanh")

    def run():
        out, pre = gemm_module._gemm_op(a, b, bias, res, "gelu_tanh", True)
        assert rel_error(out, want) < TOL[dtype] and rel_error(pre, want_pre) < TOL[dtype]

    _each_config(monkeypatch, gemm_module._gemm_tma_kernel, run)
    assert tma_launches


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_every_simple_config(monkeypatch, dtype):
    monkeypatch.setenv("OKTO_GEMM", "simple")
    a, b = _operands((3, 333, 517), (517, 129), dtype)
    a = a.transpose(0, 1).contiguous().transpose(0, 1)  # batched: rows do not merge
    bias = torch.randn(129, device="cuda").to(dtype)
    want = gemm_reference(a.double(), b.double(), bias.double(), None, "gelu")

    def run():
        assert rel_error(gemm(a, b, bias, None, "gelu"), want) < TOL[dtype]

    _each_config(monkeypatch, gemm_module._gemm_kernel, run)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_tma_split_k_each_tile_shape(monkeypatch, tma_launches, dtype):
    """GPT-2's weight gradient shape, x^T @ dY, which the heuristic splits along K: one
    configuration per tile shape, since the split changes only where tiles start and land."""
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("TMA kernels need sm_90+")
    x = torch.randn(16384, 768, device="cuda").to(dtype)
    dy = (torch.randn(16384, 3072, device="cuda") / 128).to(dtype)
    assert gemm_module._split_k(768, 3072, 16384, gemm_module._sm_count(x.device)) > 1
    want = x.double().T @ dy.double()

    def run():
        assert rel_error(matmul(x.T, dy), want) < TOL[dtype]

    tiles = {}
    for cfg in gemm_module._gemm_tma_kernel.configs:
        tiles.setdefault((cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"]), cfg)
    _each_config(monkeypatch, gemm_module._gemm_tma_kernel, run, list(tiles.values()))
    assert tma_launches


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_every_act_grad_config(monkeypatch, dtype):
    """dZ = dY * gelu'(Z) and the bias gradient, for each tile the autotuner may pick, on
    rows that leave the 64 row groups uneven and columns that leave the last block ragged."""
    dy = torch.randn(5000, 3000, device="cuda").to(dtype)
    z = (torch.randn(5000, 3000, device="cuda") * 2).to(dtype)
    z64 = z.double().requires_grad_()
    torch.nn.functional.gelu(z64, approximate="tanh").backward(dy.double())
    want_dz, want_db = z64.grad, z64.grad.sum(0)

    def run():
        dz, db = gemm_module._act_grad_op(dy, z, "gelu_tanh", True)
        assert rel_error(dz, want_dz) < TOL[dtype] and rel_error(db, want_db) < TOL[dtype]

    _each_config(monkeypatch, gemm_module._act_grad_kernel, run)


GPU_SHAPES = [(4096, 4096, 4096), (2048, 768, 3072), (2048, 3072, 768), (1000, 1000, 1000)]


@pytest.mark.gpu
@pytest.mark.parametrize("m, k, n", GPU_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_matmul_real_sizes(dtype, m, k, n):
    a, b = _operands((m, k), (k, n), dtype)
    _check_against_float64(matmul, torch.matmul, [a, b], TOL[dtype])


@pytest.mark.gpu
@pytest.mark.parametrize(
    "activation, layout", [("gelu_tanh", "in_out"), ("gelu", "out_in"), ("none", "out_in")]
)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_fused_linear_gpt2_mlp(dtype, activation, layout):
    x = torch.randn(4, 512, 768, device="cuda").to(dtype)
    w_in_out = (torch.randn(768, 3072, device="cuda") / math.sqrt(768)).to(dtype)
    weight = w_in_out.T.contiguous() if layout == "out_in" else w_in_out
    bias = torch.randn(3072, device="cuda").to(dtype)
    res = torch.randn(4, 512, 3072, device="cuda").to(dtype)
    public = None if activation == "none" else activation

    def fn(x, weight, bias, res):
        return linear(x, weight, bias, public, res, weight_layout=layout)

    def ref(x, weight, bias, res):
        w = weight.T if layout == "out_in" else weight
        return gemm_reference(x, w, bias, res, activation)

    _check_against_float64(fn, ref, [x, weight, bias, res], TOL[dtype])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_odd_batched_and_strided(dtype):
    a, b = _operands((3, 333, 517), (3, 517, 129), dtype)
    _check_against_float64(matmul, torch.matmul, [a, b], TOL[dtype])
    a = torch.randn(517, 333, device="cuda").to(dtype).T
    b = (torch.randn(1034, 258, device="cuda") / math.sqrt(517)).to(dtype)[::2, ::2]
    _check_against_float64(matmul, torch.matmul, [a, b], TOL[dtype])


@pytest.mark.gpu
def test_gpu_fp32(allow_tf32):
    a, b = _operands((1024, 2048), (2048, 1536), torch.float32)
    _check_against_float64(matmul, torch.matmul, [a, b], TF32_TOL if allow_tf32 else 1e-5)


@pytest.mark.gpu
def test_gpu_hopper_takes_the_tma_path_at_gpt2_shapes_forward_and_backward(tma_launches):
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("TMA kernels need sm_90+")
    x = torch.randn(16384, 768, device="cuda", dtype=torch.float16, requires_grad=True)
    bias = torch.randn(3072, device="cuda", dtype=torch.float16, requires_grad=True)
    for shape, layout in [((768, 3072), "in_out"), ((3072, 768), "out_in")]:
        weight = (torch.randn(shape, device="cuda") / 28).half().requires_grad_()
        out = linear(x, weight, bias, activation="gelu_tanh", weight_layout=layout)
        out.backward(torch.randn_like(out))
        assert weight.grad.is_contiguous()
    assert len(tma_launches) == 6  # forward, dX and dW of each layout


@pytest.mark.gpu
def test_gpu_torch_compile_inductor():
    x = torch.randn(8, 256, 768, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = (torch.randn(3072, 768, device="cuda") / 28).to(torch.bfloat16).requires_grad_()
    bias = torch.randn(3072, device="cuda", dtype=torch.bfloat16, requires_grad=True)

    def step(x, w, bias):
        return linear(x, w, bias, "gelu_tanh").float().square().mean()

    compiled = torch.compile(step, fullgraph=True)
    grads = torch.autograd.grad(compiled(x, w, bias), (x, w, bias))
    expected = torch.autograd.grad(step(x, w, bias), (x, w, bias))
    for g, e in zip(grads, expected, strict=True):
        assert rel_error(g, e) < TOL[torch.bfloat16]
