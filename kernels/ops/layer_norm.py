"""LayerNorm over the last dimension, with an optional fused residual add.

`layer_norm(x, w, b, residual=r)` computes `s = x + r` and `y = LayerNorm(s)` in
one pass and returns `(y, s)`: pre-norm transformers feed `s` to the next
residual branch, so the add costs no extra read or write. The kernels live in
`norm_kernels` (shared with RMSNorm); this module is the op, its autograd and
its reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from okto.kernels import backend
from okto.kernels.ops import norm_kernels


@backend.eager_fast_path
@torch.library.custom_op("okto::layer_norm", mutates_args=())
def _layer_norm_op(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, x + residual or an empty tensor, mean, rstd); mean and rstd are fp32 per row."""
    return norm_kernels.forward(x, weight, bias, residual, eps, rms=False)


@_layer_norm_op.register_fake
def _(x, weight, bias, residual, eps):
    return norm_kernels.fake_forward(x, residual, rms=False)


@backend.eager_fast_path
@torch.library.custom_op("okto::layer_norm_backward", mutates_args=())
def _layer_norm_backward_op(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    dsum: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dweight, dbias); `x` is the normalised input, `dsum` the gradient of x + residual."""
    return norm_kernels.backward(dy, x, weight, bias, mean, rstd, dsum, rms=False)


@_layer_norm_backward_op.register_fake
def _(dy, x, weight, bias, mean, rstd, dsum):
    return norm_kernels.fake_backward(x, weight, bias)


def _setup_context(ctx, inputs, output):
    x, weight, bias, residual, _ = inputs
    _, s, mean, rstd = output
    # Unused outputs get None, not zeros: no [M, N] zeros for an unused sum.
    ctx.set_materialize_grads(False)
    ctx.mark_non_differentiable(mean, rstd)
    ctx.has_residual = residual is not None
    ctx.save_for_backward(s if ctx.has_residual else x, weight, bias, mean, rstd)


def _backward(ctx, dy, dsum, _dmean, _drstd):
    x, weight, bias, mean, rstd = ctx.saved_tensors
    dy = torch.zeros_like(x) if dy is None else dy  # only the sum was used
    dsum = dsum if ctx.has_residual else None  # without a residual the sum output is empty
    dx, dw, db = _layer_norm_backward_op(dy, x, weight, bias, mean, rstd, dsum)
    return (
        dx,
        dw if weight is not None else None,
        db if bias is not None else None,
        dx if ctx.has_residual else None,
        None,
    )


_layer_norm_op.register_autograd(_backward, setup_context=_setup_context)


def layer_norm_reference(x, weight=None, bias=None, eps=1e-5, residual=None):
    """PyTorch LayerNorm in fp32, rounded to x's dtype; same returns as `layer_norm`."""
    s = x if residual is None else x + residual
    y = F.layer_norm(
        s.float(),
        (s.shape[-1],),
        weight.float() if weight is not None else None,
        bias.float() if bias is not None else None,
        eps,
    ).to(x.dtype)
    return y if residual is None else (y, s)


def layer_norm(x, weight=None, bias=None, eps=1e-5, residual=None):
    """LayerNorm of `x` (or of `x + residual`) over its last dimension.

    `weight` and `bias` are optional, shape `(x.shape[-1],)`, any float dtype; the
    statistics are fp32 and y has x's dtype. Returns `y`, or `(y, x + residual)`
    when `residual` (same shape and dtype as x) is given; gradients flow through both.
    """
    norm_kernels.check_inputs(x, residual, "layer_norm", weight=weight, bias=bias)
    tensors = [t for t in (x, weight, bias, residual) if t is not None]
    if not backend.use_triton(*tensors):
        return layer_norm_reference(x, weight, bias, eps, residual)
    y, s, _, _ = _layer_norm_op(x, weight, bias, residual, eps)
    return y if residual is None else (y, s)
