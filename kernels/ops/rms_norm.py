"""RMSNorm over the last dimension, with an optional fused residual add.

`rms_norm(x, w, residual=r)` computes `s = x + r` and `y = RMSNorm(s)` in one
pass and returns `(y, s)`, as fused add-norm kernels do for pre-norm models
(Llama); an fp32 residual stream with a 16-bit branch output and `out_dtype`
work as in `layer_norm`, and so does `x_bias`, the deferred bias of the layer that
produced x. The kernels live in `norm_kernels` (shared with LayerNorm); this
module is the op, its autograd and its reference.
"""

from __future__ import annotations

import torch

from okto.kernels import backend
from okto.kernels.ops import norm_kernels


@backend.eager_fast_path
@torch.library.custom_op("okto::rms_norm", mutates_args=())
def _rms_norm_op(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    residual: torch.Tensor | None,
    x_bias: torch.Tensor | None,
    eps: float,
    out_dtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, x (+ x_bias) + residual or an empty tensor, rstd); rstd is fp32 per row."""
    y, s, _, rstd = norm_kernels.forward(x, weight, None, residual, eps, True, out_dtype, x_bias)
    return y, s, rstd


@_rms_norm_op.register_fake
def _(x, weight, residual, x_bias, eps, out_dtype):
    y, s, _, rstd = norm_kernels.fake_forward(x, residual, rms=True, out_dtype=out_dtype)
    return y, s, rstd


@backend.eager_fast_path
@torch.library.custom_op("okto::rms_norm_backward", mutates_args=())
def _rms_norm_backward_op(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    rstd: torch.Tensor,
    dsum: torch.Tensor | None,
    narrow: torch.dtype | None,
    x_bias: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dx in `narrow` or empty, dweight, d(x_bias)); `x` is the normalised input,
    `dsum` the gradient of x + residual."""
    dx, dn, dw, _, dxb = norm_kernels.backward(
        dy, x, weight, None, rstd, rstd, dsum, True, narrow, x_bias
    )
    return dx, dn, dw, dxb


@_rms_norm_backward_op.register_fake
def _(dy, x, weight, rstd, dsum, narrow, x_bias):
    dx, dn, dw, _, dxb = norm_kernels.fake_backward(x, weight, None, narrow, x_bias)
    return dx, dn, dw, dxb


def _setup_context(ctx, inputs, output):
    x, weight, residual, x_bias, _, _ = inputs
    _, s, rstd = output
    # Unused outputs get None, not zeros: no [M, N] zeros for an unused sum.
    ctx.set_materialize_grads(False)
    ctx.mark_non_differentiable(rstd)
    ctx.input_dtypes = norm_kernels.input_dtypes(x, residual)
    ctx.save_for_backward(s if residual is not None else x, weight, rstd, x_bias)


def _backward(ctx, dy, dsum, _drstd):
    x, weight, rstd, x_bias = ctx.saved_tensors
    dy = torch.zeros_like(x) if dy is None else dy  # only the sum was used
    x_dtype, residual_dtype = ctx.input_dtypes
    narrow = norm_kernels.narrow_dtype(x_dtype, residual_dtype, x.dtype)
    dsum = dsum if residual_dtype is not None else None  # no residual: the sum output is empty
    dx, dn, dw, dxb = _rms_norm_backward_op(dy, x, weight, rstd, dsum, narrow, x_bias)
    dx, dres = norm_kernels.input_grads(dx, dn, x_dtype, residual_dtype)
    dw = dw if weight is not None else None
    return dx, dw, dres, dxb if x_bias is not None else None, None, None


_rms_norm_op.register_autograd(_backward, setup_context=_setup_context)


def rms_norm_reference(x, weight=None, eps=1e-6, residual=None, out_dtype=None, x_bias=None):
    """RMSNorm in fp32, rounded to `out_dtype` (by default the dtype of x, or of
    x + residual); same returns as `rms_norm`."""
    s = norm_kernels.sum_reference(x, residual, x_bias)
    s32 = s.float()
    y = s32 * torch.rsqrt(s32.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.float()
    y = y.to(out_dtype or s.dtype)
    return y if residual is None else (y, s)


def rms_norm(x, weight=None, eps=1e-6, residual=None, out_dtype=None, x_bias=None):
    """RMSNorm of `x` (or of `x + residual`) over its last dimension: x / sqrt(mean(x^2) + eps) * w.

    `weight` is optional, shape `(x.shape[-1],)`, any float dtype; the statistics are
    fp32. Returns `y`, or `(y, x + residual)` when `residual` (x's shape; x's dtype, or
    one of the two fp32) is given; the sum has PyTorch's promoted dtype and gradients
    flow through both. y has the sum's dtype (x's without a residual) unless
    `out_dtype` names another. `x_bias` (with a residual only) is added to x first, as
    in `layer_norm`.
    """
    eps = norm_kernels.check_eps(eps, "rms_norm")
    norm_kernels.check_inputs(x, residual, "rms_norm", out_dtype, weight=weight, x_bias=x_bias)
    tensors = [t for t in (x, weight, residual, x_bias) if t is not None]
    if not backend.use_triton(*tensors):
        return rms_norm_reference(x, weight, eps, residual, out_dtype, x_bias)
    y, s, _ = _rms_norm_op(x, weight, residual, x_bias, eps, out_dtype)
    return y if residual is None else (y, s)
