import pytest
import torch

from okto.kernels import KernelError
from okto.kernels.ops import adamw as adamw_module
from okto.kernels.ops.adamw import adamw_
from tests.kernels.numerics import DEVICE

SHAPES = [(7,), (3, 1029), (2048,), (5, 7, 3)]  # tails, whole blocks, several blocks
BETAS = (0.9, 0.95)


def _state(shapes, device=DEVICE, dtype=torch.float32, offset=0):
    """Parameters, gradients and moments of these shapes; `offset` elements into a buffer
    moves every address off 16-byte alignment."""

    def make(shape, scale, positive=False):
        n = torch.Size(shape).numel()
        values = torch.randn(n, dtype=torch.float64) * scale
        values = values.abs() if positive else values
        buf = torch.empty(n + offset, dtype=dtype, device=device)
        view = buf[offset:].view(shape)
        view.copy_(values.view(shape))
        return view

    params = [make(s, 1.0) for s in shapes]
    grads = [make(s, 1e-2) for s in shapes]
    exp_avgs = [make(s, 1e-3) for s in shapes]
    exp_avg_sqs = [make(s, 1e-5, positive=True) for s in shapes]
    steps = [torch.tensor(3.0, device=device) for _ in shapes]
    return params, grads, exp_avgs, exp_avg_sqs, steps


def _reference64(params, grads, exp_avgs, exp_avg_sqs, steps, lr, wd, eps, scale):
    """One AdamW step in float64 (torch.optim.AdamW's formula), returned, not in place."""
    out = []
    for p, g, m, v, s in zip(params, grads, exp_avgs, exp_avg_sqs, steps, strict=True):
        p, g, m, v = (t.detach().double().cpu() for t in (p, g, m, v))
        step = s.item() + 1
        g = g / scale
        p = p * (1 - lr * wd)
        m = BETAS[0] * m + (1 - BETAS[0]) * g
        v = BETAS[1] * v + (1 - BETAS[1]) * g * g
        bias1, bias2 = 1 - BETAS[0] ** step, 1 - BETAS[1] ** step
        p = p - lr / bias1 * m / (v.sqrt() / bias2**0.5 + eps)
        out.append((p, m, v, step))
    return out


def _assert_close(state, expected):
    params, _, exp_avgs, exp_avg_sqs, steps = state
    for p, m, v, s, (p64, m64, v64, step) in zip(
        params, exp_avgs, exp_avg_sqs, steps, expected, strict=True
    ):
        torch.testing.assert_close(p.double().cpu(), p64, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(m.double().cpu(), m64, rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(v.double().cpu(), v64, rtol=1e-5, atol=1e-12)
        assert s.item() == step


@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "unaligned"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("grad_scale", [None, 1.7])
def test_adamw_matches_float64(grad_scale, weight_decay, offset):
    state = _state(SHAPES, offset=offset)
    scale = torch.tensor(grad_scale, device=DEVICE) if grad_scale else None
    lr, eps = 3e-3, 1e-8
    expected = _reference64(*state, lr, weight_decay, eps, grad_scale or 1.0)
    assert adamw_module.triton_ready(*state)
    adamw_(*state, lr=lr, betas=BETAS, eps=eps, weight_decay=weight_decay, grad_scale=scale)
    _assert_close(state, expected)


def test_adamw_steps_again_with_new_gradients():
    """A second step with gradients at new addresses reads the new ones (the address
    tables are cached by address)."""
    state = _state(SHAPES)
    adamw_(*state, lr=1e-3, betas=BETAS, weight_decay=0.1)
    params, grads, exp_avgs, exp_avg_sqs, steps = state
    new_grads = [torch.randn_like(g) * 1e-2 for g in grads]
    expected = _reference64(params, new_grads, exp_avgs, exp_avg_sqs, steps, 1e-3, 0.1, 1e-8, 1)
    adamw_(params, new_grads, exp_avgs, exp_avg_sqs, steps, lr=1e-3, betas=BETAS, weight_decay=0.1)
    _assert_close(state, expected)


@pytest.mark.parametrize("found", [0.0, 1.0])
def test_found_inf_skips_the_update_and_the_step(found):
    state = _state(SHAPES)
    before = [[t.clone() for t in ts] for ts in state]
    expected = _reference64(*state, 1e-3, 0.1, 1e-8, 1.0)
    found_inf = torch.tensor(found, device=DEVICE)
    adamw_(*state, lr=1e-3, betas=BETAS, weight_decay=0.1, found_inf=found_inf)
    if found:
        for now, then in zip(state, before, strict=True):
            for a, b in zip(now, then, strict=True):
                assert torch.equal(a, b)
    else:
        _assert_close(state, expected)


def test_other_dtypes_take_torchs_fused_adamw():
    state = _state(SHAPES, dtype=torch.float16)
    twin = [[t.clone() for t in ts] for ts in state]
    assert not adamw_module.triton_ready(*state)
    adamw_(*state, lr=1e-3, betas=BETAS, weight_decay=0.1)
    params, grads, exp_avgs, exp_avg_sqs, steps = twin
    torch._foreach_add_(steps, 1.0)
    torch._fused_adamw_(
        params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=1e-3,
        beta1=BETAS[0], beta2=BETAS[1], weight_decay=0.1, eps=1e-8, maximize=False,
    )  # fmt: skip
    for now, then in zip(state, twin, strict=True):
        for a, b in zip(now, then, strict=True):
            assert torch.equal(a, b)


def test_adamw_rejects_mismatched_lists():
    params, grads, exp_avgs, exp_avg_sqs, steps = _state(SHAPES)
    with pytest.raises(KernelError, match="same length"):
        adamw_(params, grads[:-1], exp_avgs, exp_avg_sqs, steps, lr=1e-3)
    grads[1] = grads[1].reshape(-1)
    with pytest.raises(KernelError, match="shape"):
        adamw_(params, grads, exp_avgs, exp_avg_sqs, steps, lr=1e-3)


def test_opcheck():
    state = _state([(5,), (3, 40)])
    args = (*state, 1e-3, 0.9, 0.95, 1e-8, 0.1, torch.tensor(1.5, device=DEVICE), None)
    torch.library.opcheck(adamw_module._adamw_op, args)


@pytest.mark.gpu
def test_gpu_adamw_matches_torch_fused_at_model_sizes():
    shapes = [(50304, 768), (768,), (768, 2304), (2304,), (3072, 768), (1024, 768)]
    state = _state(shapes, device="cuda")
    twin = [[t.clone() for t in ts] for ts in state]
    grads_before = [g.clone() for g in state[1]]
    scale = torch.tensor(1.3, device="cuda")
    adamw_(*state, lr=6e-4, betas=BETAS, weight_decay=0.1, grad_scale=scale)
    params, grads, exp_avgs, exp_avg_sqs, steps = twin
    torch._foreach_add_(steps, 1.0)
    torch._fused_adamw_(
        params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=6e-4,
        beta1=BETAS[0], beta2=BETAS[1], weight_decay=0.1, eps=1e-8, maximize=False,
        grad_scale=scale,
    )  # fmt: skip
    # torch's kernel also writes the unscaled gradients back; okto's only reads them
    assert all(torch.equal(g, g0) for g, g0 in zip(state[1], grads_before, strict=True))
    for i in (0, 2, 3, 4):  # parameters, moments, step counts
        for a, b in zip(state[i], twin[i], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
