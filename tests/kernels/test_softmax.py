import numpy as np
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from okto.kernels import KernelError, softmax
from okto.kernels.ops import softmax as softmax_module
from tests.kernels.numerics import DEVICE, TOL, rel_error


@pytest.fixture(params=["one_pass", "looped"])
def variant(request, monkeypatch):
    """Both kernels: `looped` shrinks the one-pass limit so rows stream through in chunks."""
    if request.param == "looped":
        monkeypatch.setattr(softmax_module, "ONE_PASS_MAX", 32)
        monkeypatch.setattr(softmax_module, "CHUNK", 16)
    return request.param


def _check(x, dim, dtype, mask=None):
    x_lp = x.to(dtype)
    if mask is not None:
        x_lp = x_lp.masked_fill(mask, float("-inf"))
    x_lp.requires_grad_()
    y = softmax(x_lp, dim=dim)
    dy = torch.randn_like(y)
    y.backward(dy)
    y64 = torch.softmax(x_lp.detach().double(), dim=dim)
    assert y.dtype == dtype and y.shape == x.shape
    assert y.stride() == torch.softmax(x_lp.detach(), dim=dim).stride()
    assert rel_error(y, y64) < TOL[dtype]
    # The backward reads the forward's output as rounded to `dtype`, so its oracle is the
    # exact gradient at that output: dx = y * (dy - sum(dy * y)). Against the gradient at
    # the unrounded softmax, fp16 rounding of y alone exceeds TOL whenever dy - sum(dy * y)
    # nearly cancels (about one fresh seed in thirty for a 7-element row). The same
    # cancellation makes any rounding large next to dx itself (fp32: 2e-4 of max|dx| for
    # one seed in 300 at 7 elements), so the error is measured against the size of the
    # terms the kernel adds, y * (|dy| + |sum(dy * y)|).
    y_used, dy64 = y.detach().double(), dy.double()
    total = (dy64 * y_used).sum(dim, keepdim=True)
    dx64 = y_used * (dy64 - total)
    terms = (y_used * (dy64.abs() + total.abs())).abs().max()
    assert (x_lp.grad.double() - dx64).abs().max() / terms < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape, dim", [((7,), -1), ((3, 53), -1), ((2, 5, 130), -1), ((37, 6), 0)])
def test_softmax_forward_backward_matches_float64(shape, dim, dtype, variant):
    _check(torch.randn(shape, device=DEVICE) * 3, dim, dtype)


@pytest.mark.parametrize("dim", [0, 1, 2, -1])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_result_has_torch_softmax_layout(layout, dim, variant):
    """dim != -1 gave the kernel's output moved back: a permuted view, not torch's layout."""
    x = torch.randn(4, 5, 37, device=DEVICE) * 3
    if layout == "transposed":
        x = x.transpose(0, 2)
    _check(x, dim, torch.float32)
    with FakeTensorMode() as mode:
        fake = softmax(mode.from_tensor(x), dim=dim)
    assert fake.stride() == torch.softmax(x, dim=dim).stride()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_masked_entries_and_a_masked_first_chunk(dtype, variant):
    x = torch.randn(4, 100, device=DEVICE) * 3
    mask = torch.rand(4, 100, device=DEVICE) < 0.3
    mask[1, :40] = True  # the looped kernel sees whole chunks of -inf before any value
    mask[:, -1] = False
    _check(x, -1, dtype, mask)


def test_numpy_in_numpy_out():
    x = np.random.randn(3, 9).astype(np.float32)
    y = softmax(x)
    assert isinstance(y, np.ndarray)
    np.testing.assert_allclose(y, torch.softmax(torch.from_numpy(x), -1).numpy(), atol=1e-6)


def test_fake_implementations_agree_with_the_kernels():
    x = torch.randn(3, 5, 17).transpose(0, 1)
    y = softmax_module._softmax_op(x)
    dx = softmax_module._softmax_backward_op(torch.randn_like(y), y)
    with FakeTensorMode() as mode:
        fx = mode.from_tensor(x)
        fy = softmax_module._softmax_op(fx)
        fdx = softmax_module._softmax_backward_op(fy, fy)
    for real, fake in [(y, fy), (dx, fdx)]:
        assert (fake.shape, fake.dtype, fake.stride()) == (real.shape, real.dtype, real.stride())


def test_torch_compile_fullgraph_forward_backward():
    x = torch.randn(4, 33, device=DEVICE, requires_grad=True)

    def f(x):
        return (softmax(x, dim=0) * torch.arange(33.0, device=DEVICE)).sum()

    (grad,) = torch.autograd.grad(torch.compile(f, fullgraph=True, backend="aot_eager")(x), x)
    (expected,) = torch.autograd.grad(f(x), x)
    assert rel_error(grad, expected) < 1e-6


def test_empty_and_scalar_inputs():
    assert softmax(torch.randn(0, 5, device=DEVICE)).shape == (0, 5)
    assert softmax(torch.randn(4, 0, device=DEVICE)).shape == (4, 0)
    assert softmax(torch.tensor(2.0, device=DEVICE)).item() == 1.0


def test_errors_name_the_problem():
    with pytest.raises(KernelError, match="supported"):
        softmax(torch.randn(3, 4, dtype=torch.float64))
    with pytest.raises(KernelError, match=r"dim=2 is out of range for shape \(3, 4\)"):
        softmax(torch.randn(3, 4), dim=2)  # was a bare IndexError from torch
    with pytest.raises(KernelError, match="out of range"):
        softmax(torch.randn(3, 4), dim=-3)
    with pytest.raises(KernelError, match=r"dim must be an int, got 1\.0"):
        softmax(torch.randn(3, 4), dim=1.0)  # was a TypeError from movedim


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(4096, 1024), (512, 50304), (64, 16384), (1000, 77)])
def test_gpu_real_sizes(shape, dtype):
    mask = torch.rand(shape, device="cuda") < 0.1
    mask[:, 0] = False
    _check(torch.randn(shape, device="cuda") * 4, -1, dtype, mask)


@pytest.mark.gpu
def test_gpu_torch_compile_inductor():
    x = torch.randn(8, 12, 256, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)

    def f(x):
        return softmax(x * 0.125, dim=-1).float().square().sum()

    (grad,) = torch.autograd.grad(torch.compile(f, fullgraph=True)(x), x)
    (expected,) = torch.autograd.grad(f(x), x)
    assert rel_error(grad, expected) < TOL[torch.bfloat16]
