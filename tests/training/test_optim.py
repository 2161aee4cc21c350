"""Gradient clipping folded into fused AdamW's step gives clip_grad_norm_'s update."""

import copy
import math

import pytest
import torch

from okto.training import optim
from okto.training.distributed import Parallel


def _pair():
    model = torch.nn.Sequential(torch.nn.Linear(16, 24), torch.nn.GELU(), torch.nn.Linear(24, 8))
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
