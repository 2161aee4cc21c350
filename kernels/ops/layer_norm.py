"""LayerNorm over the last dimension, with an optional fused residual add.

`layer_norm(x, w, b, residual=r)` computes `s = x + r` and `y = LayerNorm(s)` in
one pass and returns `(y, s)`: pre-norm transformers feed `s` to the next
residual branch, so the add costs no extra read or write. Under autocast the
residual stream is fp32 and the branch output 16-bit: `s` is then fp32, and
`out_dtype` writes y in the dtype the next GEMM reads; `x_bias`, the bias of
the layer that produced x, is added here in the same pass when that layer runs
without it, and its gradient comes out of the norm's backward. The kernels live in
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
    x_bias: torch.Tensor | None,
    eps: float,
    out_dtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, x (+ x_bias) + residual or an empty tensor, mean, rstd); mean and rstd are fp32
    per row."""
    return norm_kernels.forward(x, weight, bias, residual, eps, False, out_dtype, x_bias)


@_layer_norm_op.register_fake
def _(x, weight, bias, residual, x_bias, eps, out_dtype):
    return norm_kernels.fake_forward(x, residual, rms=False, out_dtype=out_dtype)


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
    narrow: torch.dtype | None,
    x_bias: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dx in `narrow` or empty, dweight, dbias, d(x_bias)); `x` is the normalised input,
    `dsum` the gradient of x + residual."""
    return norm_kernels.backward(dy, x, weight, bias, mean, rstd, dsum, False, narrow, x_bias)


@_layer_norm_backward_op.register_fake
def _(dy, x, weight, bias, mean, rstd, dsum, narrow, x_bias):
    return norm_kernels.fake_backward(x, weight, bias, narrow, x_bias)


def _setup_context(ctx, inputs, output):
    x, weight, bias, residual, x_bias, _, _ = inputs
    _, s, mean, rstd = output
    # Unused outputs get None, not zeros: no [M, N] zeros for an unused sum.
    ctx.set_materialize_grads(False)
    ctx.mark_non_differentiable(mean, rstd)
    ctx.input_dtypes = norm_kernels.input_dtypes(x, residual)
    ctx.save_for_backward(s if residual is not None else x, weight, bias, mean, rstd, x_bias)


def _backward(ctx, dy, dsum, _dmean, _drstd):
    x, weight, bias, mean, rstd, x_bias = ctx.saved_tensors
    dy = torch.zeros_like(x) if dy is None else dy  # only the sum was used
    x_dtype, residual_dtype = ctx.input_dtypes
    narrow = norm_kernels.narrow_dtype(x_dtype, residual_dtype, x.dtype)
    dsum = dsum if residual_dtype is not None else None  # no residual: the sum output is empty
    dx, dn, dw, db, dxb = _layer_norm_backward_op(
        dy, x, weight, bias, mean, rstd, dsum, narrow, x_bias
    )
    dx, dres = norm_kernels.input_grads(dx, dn, x_dtype, residual_dtype)
    return (
        dx,
        dw if weight is not None else None,
        db if bias is not None else None,
        dres,
        dxb if x_bias is not None else None,
        None,
        None,
    )


_layer_norm_op.register_autograd(_backward, setup_context=_setup_context)


def layer_norm_reference(
    x, weight=None, bias=None, eps=1e-5, residual=None, out_dtype=None, x_bias=None
):
    """PyTorch LayerNorm in fp32, rounded to `out_dtype` (by default the dtype of x, or of
    x + residual); same returns as `layer_norm`."""
    s = norm_kernels.sum_reference(x, residual, x_bias)
    y = F.layer_norm(
        s.float(),
        (s.shape[-1],),
        weight.float() if weight is not None else None,
        bias.float() if bias is not None else None,
        eps,
    ).to(out_dtype or s.dtype)
    return y if residual is None else (y, s)


def layer_norm(x, weight=None, bias=None, eps=1e-5, residual=None, out_dtype=None, x_bias=None):
    """LayerNorm of `x` (or of `x + residual`) over its last dimension.

    `weight` and `bias` are optional, shape `(x.shape[-1],)`, any float dtype; the
    statistics are fp32. Returns `y`, or `(y, x + residual)` when `residual` (x's shape;
    x's dtype, or one of the two fp32) is given; the sum has PyTorch's promoted dtype and
    gradients flow through both. y has the sum's dtype (x's without a residual) unless
    `out_dtype` names another. `x_bias` (with a residual only; shape `(x.shape[-1],)`)
    is added to x first: the sum is `x + x_bias + residual`, formed in fp32 and rounded
    once to the sum's dtype.
    """
    eps = norm_kernels.check_eps(eps, "layer_norm")
    norm_kernels.check_inputs(
        x, residual, "layer_norm", out_dtype, weight=weight, bias=bias, x_bias=x_bias
    )
    tensors = [t for t in (x, weight, bias, residual, x_bias) if t is not None]
    if not backend.use_triton(*tensors):
        return layer_norm_reference(x, weight, bias, eps, residual, out_dtype, x_bias)
    y, s, _, _ = _layer_norm_op(x, weight, bias, residual, x_bias, eps, out_dtype)
    return y if residual is None else (y, s)
