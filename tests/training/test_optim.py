"""Gradient clipping folded into fused AdamW's step gives clip_grad_norm_'s update; okto's
AdamW kernel follows torch's; the schedules take their shape from TRAIN."""

import copy
import math

import pytest
import torch

from okto.training import optim
from okto.training.distributed import Parallel
from tests.kernels.numerics import DEVICE


def _pair(device="cpu"):
    model = torch.nn.Sequential(torch.nn.Linear(16, 24), torch.nn.GELU(), torch.nn.Linear(24, 8))
    model = model.to(device)
    return model, copy.deepcopy(model)


@pytest.mark.parametrize("max_norm", [1.0, 1e6, math.inf])
def test_folded_clipping_matches_clip_grad_norm(max_norm):
    clipped, folded = _pair()
    # fused AdamW runs on the CPU too, grad_scale included
    opt_clipped = torch.optim.AdamW(clipped.parameters(), lr=1e-2, fused=True)
    opt_folded = torch.optim.AdamW(folded.parameters(), lr=1e-2, fused=True)
    assert optim.folds_clipping(opt_folded)
    parallel = Parallel()
    for _ in range(3):
        x = torch.randn(5, 16) * 30  # gradient norms far above 1: the clip bites
        for model in (clipped, folded):
            model(x).square().sum().backward()
        want = torch.nn.utils.clip_grad_norm_(list(clipped.parameters()), max_norm)
        norm = parallel.clip_grad_norm(list(folded.parameters()), max_norm, opt_folded)
        torch.testing.assert_close(norm, want)
        opt_clipped.step()
        opt_folded.step()
        for a, b in zip(clipped.parameters(), folded.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
        opt_clipped.zero_grad()
        opt_folded.zero_grad()


def test_unfused_optimizers_clip_the_gradients_themselves():
    model, _ = _pair()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    assert not optim.folds_clipping(opt)
    assert not optim.folds_clipping(torch.optim.SGD(model.parameters(), lr=0.1))
    model(torch.randn(5, 16) * 30).square().sum().backward()
    params = list(model.parameters())
    Parallel().clip_grad_norm(params, 1.0, opt)
    clipped = torch.nn.utils.get_total_norm([p.grad for p in params])
    assert clipped.item() == pytest.approx(1.0, rel=1e-4)
    assert getattr(opt, "grad_scale", None) is None


def _trajectory(model, optimizer, steps=4, skip_at=2):
    """Losses of a few steps with folded clipping; step `skip_at` is skipped on the device
    (found_inf), as the trainer skips a non-finite update."""
    parallel = Parallel()
    device = next(model.parameters()).device
    torch.manual_seed(0)
    for step in range(steps):
        model(torch.randn(5, 16).to(device) * 30).square().sum().backward()
        parallel.clip_grad_norm(list(model.parameters()), 1.0, optimizer)
        optimizer.found_inf = torch.tensor(float(step == skip_at), device=device)
        optimizer.step()
        optimizer.found_inf = None
        optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("kernels", ["triton", "native"])
def test_kernel_adamw_follows_torchs_fused_adamw(kernels, monkeypatch):
    """okto's AdamW kernel (Triton's interpreter on a CPU) and torch's fused AdamW take the
    same steps, weight decay per group, folded clipping and a skipped step included."""
    monkeypatch.setenv("OKTO_KERNELS", kernels)
    ours, theirs = _pair(DEVICE)
    opt_ours = optim.build_optimizer(ours, "adamw", 1e-2, 0.1, kernel=True)
    opt_theirs = optim.build_optimizer(theirs, "adamw", 1e-2, 0.1)
    assert isinstance(opt_ours, optim.KernelAdamW) and optim.folds_clipping(opt_ours)
    assert type(opt_theirs) is torch.optim.AdamW
    _trajectory(ours, opt_ours)
    _trajectory(theirs, opt_theirs)
    # fp32 rounding apart (the kernel's bias corrections are exp2(step * log2(beta))), which
    # m / sqrt(v) amplifies where v is tiny, and the next steps' gradients (inputs x 30)
    # carry on: up to 2e-6 seen in the weights, on steps of lr = 1e-2, and 1e-4 relative
    # in v, over 40 seeds. A wrong update or moment would differ by percents.
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for a, b in zip(opt_ours.state.values(), opt_theirs.state.values(), strict=True):
        assert a["step"].item() == b["step"].item() == 3  # four steps, one skipped
        torch.testing.assert_close(a["exp_avg_sq"], b["exp_avg_sq"], rtol=1e-3, atol=1e-9)


def test_kernel_adamw_state_is_torchs(monkeypatch):
    """A checkpoint of either optimizer resumes in the other."""
    monkeypatch.setenv("OKTO_KERNELS", "triton")
    ours, theirs = _pair(DEVICE)
    opt_ours = optim.build_optimizer(ours, "adamw", 1e-2, 0.1, kernel=True)
    _trajectory(ours, opt_ours, steps=2, skip_at=-1)
    theirs.load_state_dict(ours.state_dict())
    opt_theirs = optim.build_optimizer(theirs, "adamw", 1e-2, 0.1)
    opt_theirs.load_state_dict(copy.deepcopy(opt_ours.state_dict()))  # as from a file
    back = optim.build_optimizer(ours, "adamw", 1e-2, 0.1, kernel=True)
    back.load_state_dict(copy.deepcopy(opt_theirs.state_dict()))
    _trajectory(ours, back, steps=2, skip_at=-1)
    _trajectory(theirs, opt_theirs, steps=2, skip_at=-1)
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_kernel_adamw_leaves_options_it_lacks_to_torch(monkeypatch):
    monkeypatch.setenv("OKTO_KERNELS", "triton")
    ours, theirs = _pair(DEVICE)
    opt_ours = optim.KernelAdamW(ours.parameters(), lr=1e-2, amsgrad=True)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-2, amsgrad=True, fused=True)
    _trajectory(ours, opt_ours, skip_at=-1)
    _trajectory(theirs, opt_theirs, skip_at=-1)
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a, b)


def _rates(name: str, lr: float = 1.0, steps: int = 12, **shape) -> list[float]:
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([param], lr=lr)
    scheduler = optim.build_scheduler(optimizer, name, 0, steps, **shape)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_cosine_with_restarts_restarts_num_cycles_times():
    """It was one cycle whatever was asked: the same rates as cosine."""
    assert _rates("cosine_with_restarts") == _rates("cosine")
    rates = _rates("cosine_with_restarts", num_cycles=3)
    assert [i for i, rate in enumerate(rates) if rate == 1.0] == [0, 4, 8]
    assert rates[:4] == rates[4:8] == rates[8:]


def test_polynomial_takes_its_power_and_any_learning_rate():
    """power 1 is linear; power 2 falls as (1 - progress)^2. A rate at or below 1e-7 (the end
    transformers decays to by default) was a ValueError traceback."""
    assert _rates("polynomial") == pytest.approx(_rates("linear"))
    assert _rates("polynomial", power=2.0) == pytest.approx([(1 - s / 12) ** 2 for s in range(12)])
    assert _rates("polynomial", lr=1e-8, power=2.0)[1] == pytest.approx(1e-8 * (11 / 12) ** 2)


def test_schedule_shape_fields_say_they_are_okto_extensions():
    """The spec's TRAIN row names neither num_cycles nor power; the reference said what they
    do but not that they are okto's own. Given on the command line with a schedule that
    ignores them, okto train warns (as for one in the file)."""
    import okto
    from okto.language.config import TrainConfig
    from okto.training.run import load_program

    for field in ("num_cycles", "power"):
        description = TrainConfig.model_fields[field].description
        assert description.startswith("okto's own field (not in the OktoScript spec)")
        assert description.endswith("with another scheduler, a warning.")
    program = okto.parse('PROJECT "p"\nTRAIN { scheduler: "cosine" }', "p.okt")
    warned = load_program(program, ["TRAIN.power=2", "TRAIN.lr_num_cycles=3"]).warnings
    assert {w.message for w in warned} == {
        "power has no effect with scheduler: cosine (only polynomial)",
        "num_cycles has no effect with scheduler: cosine (only cosine_with_restarts)",
    }
