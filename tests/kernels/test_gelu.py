import pytest
import torch

from okto.kernels import gelu
from tests.kernels.numerics import DEVICE, TOL, rel_error


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(7,), (3, 1029), (2, 5, 33)])
def test_gelu_forward_backward_matches_float64(shape, dtype, approximate):
    x = (torch.randn(shape, dtype=torch.float64) * 3).to(DEVICE)
    x_lp = x.to(dtype).requires_grad_()
    y = gelu(x_lp, approximate=approximate)
    dy = torch.randn_like(y)
    y.backward(dy)

    x64 = x_lp.detach().double().requires_grad_()
    y64 = torch.nn.functional.gelu(x64, approximate=approximate)
    y64.backward(dy.double())

    assert y.dtype == dtype and y.shape == x.shape
    assert rel_error(y, y64) < TOL[dtype]
    assert rel_error(x_lp.grad, x64.grad) < TOL[dtype]


def test_gelu_rejects_unknown_approximation():
    with pytest.raises(ValueError, match="approximate"):
        gelu(torch.randn(4), approximate="fast")
