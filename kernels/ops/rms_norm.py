"""RMSNorm over the last dimension, with an optional fused residual add.

`rms_norm(x, w, residual=r)` computes `s = x + r` and `y = RMSNorm(s)` in one
pass and returns `(y, s)`, as fused add-norm kernels do for pre-norm models
(Llama). The kernels live in `norm_kernels` (shared with LayerNorm); this
module is the op, its autograd and its reference.
"""

from __future__ import annotations

import torch

from okto.kernels import backend
from okto.kernels.ops import norm_kernels


@backend.eager_fast_path
@torch.library.custom_op("okto::rms_norm", mutates_args=())
def _rms_norm_op(
    x: torch.Tensor, weight: torch.Tensor | None, residual: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, x + residual or an empty tensor, rstd); rstd is fp32 per row."""
    y, s, _, rstd = norm_kernels.forward(x, weight, None, residual, eps, rms=True)
    return y, s, rstd


@_rms_norm_op.register_fake
def _(x, weight, residual, eps):
    y, s, _, rstd = norm_kernels.fake_forward(x, residual, rms=True)
    return y, s, rstd


@backend.eager_fast_path
@torch.library.custom_op("okto::rms_norm_backward", mutates_args=())
def _rms_norm_backward_op(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    rstd: torch.Tensor,
    dsum: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx, dweight); `x` is the normalised input, `dsum` the gradient of x + residual."""
    dx, dw, _ = norm_kernels.backward(dy, x, weight, None, rstd, rstd, dsum, rms=True)
    return dx, dw


@_rms_norm_backward_op.register_fake
def _(dy, x, weight, rstd, dsum):
    dx, dw, _ = norm_kernels.fake_backward(x, weight, None)
    return dx, dw


def _setup_context(ctx, inputs, output):
    x, weight, residual, _ = inputs
    _, s, rstd = output
    # Unused outputs get None, not zeros: no [M, N] zeros for an unused sum.
    ctx.set_materialize_grads(False)
    ctx.mark_non_differentiable(rstd)
    ctx.has_residual = residual is not None
    ctx.save_for_backward(s if ctx.has_residual else x, weight, rstd)


def _backward(ctx, dy, dsum, _drstd):
    x, weight, rstd = ctx.saved_tensors
    dy = torch.zeros_like(x) if dy is None else dy  # only the sum was used
    dsum = dsum if ctx.has_residual else None  # without a residual the sum output is empty
    dx, dw = _rms_norm_backward_op(dy, x, weight, rstd, dsum)
    return dx, dw if weight is not None else None, dx if ctx.has_residual else None, None


_rms_norm_op.register_autograd(_backward, setup_context=_setup_context)


def rms_norm_reference(x, weight=None, eps=1e-6, residual=None):
    """RMSNorm in fp32, rounded to x's dtype; same returns as `rms_norm`."""
    s = x if residual is None else x + residual
    s32 = s.float()
    y = s32 * torch.rsqrt(s32.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.float()
    y = y.to(x.dtype)
    return y if residual is None else (y, s)


def rms_norm(x, weight=None, eps=1e-6, residual=None):
    """RMSNorm of `x` (or of `x + residual`) over its last dimension: x / sqrt(mean(x^2) + eps) * w.

    `weight` is optional, shape `(x.shape[-1],)`, any float dtype; the statistics
    are fp32 and y has x's dtype. Returns `y`, or `(y, x + residual)` when
    `residual` (same shape and dtype as x) is given; gradients flow through both.
    """
    norm_kernels.check_inputs(x, residual, "rms_norm", weight=weight)
    tensors = [t for t in (x, weight, residual) if t is not None]
    if not backend.use_triton(*tensors):
        return rms_norm_reference(x, weight, eps, residual)
    y, s, _ = _rms_norm_op(x, weight, residual, eps)
    return y if residual is None else (y, s)
