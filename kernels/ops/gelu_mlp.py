"""A GELU MLP, `gelu(x @ W_fc + b_fc) @ W_proj + b_proj`, as one op with the GELU fused both ways.

Run as separate GEMMs with pointwise kernels between them (eager, or inductor
around cuBLAS), the backward writes c_proj's input gradient dH, reads it back
with Z = x @ W_fc + b_fc for the GELU backward, sums dZ's columns for c_fc's
bias and recomputes gelu(Z) for c_proj's weight gradient: several passes over
an [M, 4C] tensor per layer. Here the GEMM that produces dH does all of that in
its epilogue (`gemm.gelu_grad_gemm`), and in forward GELU and the saved Z come
out of c_fc's GEMM epilogue. The plain products (the weight gradients, dx, c_proj's
forward) stay on cuBLAS through torch, which is faster than okto's GEMM on the
weight gradients' long reductions. Where the TMA GEMM does not run (before
Hopper, fp32, the interpreter unless OKTO_GEMM=tma) the same steps run unfused.
Saved for backward: x and Z, what inductor saves for the same MLP.

Weights are [in, out] (GPT-2's Conv1D layout); pass `weight.t()` for nn.Linear's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from okto.kernels import backend
from okto.kernels.ops import gemm

APPROXIMATIONS = {"tanh": "gelu_tanh", "none": "gelu"}  # F.gelu's name -> the epilogue's


def _addmm(bias: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.mm(a, b) if bias is None else torch.addmm(bias, a, b)


def _forward(x, w_fc, b_fc, w_proj, b_proj, approximate):
    if gemm.tma_takes(x, w_fc):
        h, z = gemm.gemm_forward(x, w_fc, b_fc, None, APPROXIMATIONS[approximate], True)
    else:
        z = _addmm(b_fc, x, w_fc)
        h = F.gelu(z, approximate=approximate)
    return _addmm(b_proj, h, w_proj), z


@backend.eager_fast_path
@torch.library.custom_op("okto::gelu_mlp", mutates_args=())
def _gelu_mlp_op(
    x: torch.Tensor,
    w_fc: torch.Tensor,
    b_fc: torch.Tensor | None,
    w_proj: torch.Tensor,
    b_proj: torch.Tensor | None,
    approximate: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the MLP's output, the pre-activation Z saved for backward) for 2-D x."""
    return _forward(x, w_fc, b_fc, w_proj, b_proj, approximate)


@_gelu_mlp_op.register_fake
def _(x, w_fc, b_fc, w_proj, b_proj, approximate):
    return x.new_empty(x.shape[0], w_proj.shape[1]), x.new_empty(x.shape[0], w_fc.shape[1])


def _setup_context(ctx, inputs, output):
    x, w_fc, _, w_proj, _, approximate = inputs
    _, z = output
    ctx.save_for_backward(x, z, w_fc, w_proj)
    ctx.approximate = approximate
    ctx.mark_non_differentiable(z)
    ctx.set_materialize_grads(False)


@backend.eager_fast_path
@torch.library.custom_op("okto::gelu_mlp_input_grad", mutates_args=())
def _input_grad_op(
    dy: torch.Tensor,
    w_proj: torch.Tensor,
    z: torch.Tensor,
    approximate: str,
    bias_grad: bool,
    need_h: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dZ, gelu(Z) or empty, dZ's column sums or empty) from the output's gradient:
    one GEMM where the TMA kernel takes dY @ W_proj^T, else its steps one by one."""
    w_t = w_proj.t()
    activation = APPROXIMATIONS[approximate]
    if gemm.tma_takes(dy, w_t):
        return gemm.gelu_grad_gemm(dy, w_t, z, activation, bias_grad, need_h)
    dz, db = gemm.act_grad_op(torch.mm(dy, w_t), z, activation, bias_grad)
    h = F.gelu(z, approximate=approximate) if need_h else dy.new_empty(0)
    return dz, h, db


@_input_grad_op.register_fake
def _(dy, w_proj, z, approximate, bias_grad, need_h):
    return (
        z.new_empty(z.shape),
        z.new_empty(z.shape if need_h else (0,)),
        z.new_empty((z.shape[1],) if bias_grad else (0,)),
    )


def _backward(ctx, dy, _dz):
    x, z, w_fc, w_proj = ctx.saved_tensors
    need_x, need_w_fc, need_b_fc, need_w_proj, need_b_proj = ctx.needs_input_grad[:5]
    if dy is None:  # the output did not reach the loss
        return None, None, None, None, None, None
    dy = dy.contiguous()
    dz, h, db_fc = _input_grad_op(dy, w_proj, z, ctx.approximate, need_b_fc, need_w_proj)
    return (
        torch.mm(dz, w_fc.t()) if need_x else None,
        torch.mm(x.t(), dz) if need_w_fc else None,
        db_fc if need_b_fc else None,
        torch.mm(h.t(), dy) if need_w_proj else None,
        dy.sum(0) if need_b_proj else None,
        None,
    )


_gelu_mlp_op.register_autograd(_backward, setup_context=_setup_context)


def gelu_mlp_reference(x, w_fc, b_fc, w_proj, b_proj, approximate="tanh"):
    h = F.gelu(x @ w_fc + (0 if b_fc is None else b_fc), approximate=approximate)
    return h @ w_proj + (0 if b_proj is None else b_proj)


def _check(x, w_fc, b_fc, w_proj, b_proj, approximate) -> None:
    if approximate not in APPROXIMATIONS:
        raise backend.KernelError(f"approximate={approximate!r}; use 'tanh' or 'none'")
    if w_fc.dim() != 2 or w_proj.dim() != 2:
        raise backend.KernelError("gelu_mlp's weights are 2-D, [in, out]")
    width, hidden = w_fc.shape
    if x.shape[-1] != width or w_proj.shape[0] != hidden:
        raise backend.KernelError(
            f"shapes do not chain: x {tuple(x.shape)}, w_fc {tuple(w_fc.shape)}, "
            f"w_proj {tuple(w_proj.shape)} (weights are [in, out])"
        )
    for bias, n, what in ((b_fc, hidden, "b_fc"), (b_proj, w_proj.shape[1], "b_proj")):
        if bias is not None and tuple(bias.shape) != (n,):
            raise backend.KernelError(f"{what} has shape {tuple(bias.shape)}; expected ({n},)")
    tensors = [t for t in (x, w_fc, b_fc, w_proj, b_proj) if t is not None]
    backend.check_same_device(*tensors)
    if any(t.dtype != x.dtype for t in tensors):
        raise backend.KernelError("gelu_mlp's input, weights and biases must share one dtype")


def gelu_mlp(x, w_fc, b_fc, w_proj, b_proj, approximate="tanh"):
    """`gelu(x @ w_fc + b_fc) @ w_proj + b_proj` over x's last dimension.

    x: [..., C]; w_fc: [C, H]; w_proj: [H, C_out] (weights [in, out], any strides);
    biases optional; `approximate` as `F.gelu`'s ("tanh" or "none"). One dtype for all.
    """
    _check(x, w_fc, b_fc, w_proj, b_proj, approximate)
    tensors = [t for t in (x, w_fc, b_fc, w_proj, b_proj) if t is not None]
    if not backend.use_triton(*tensors):
        return gelu_mlp_reference(x, w_fc, b_fc, w_proj, b_proj, approximate)
    backend.check_dtype(x, gemm.DTYPES, "gelu_mlp input")
    flat = x.reshape(-1, x.shape[-1])
    y, _ = _gelu_mlp_op(flat, w_fc, b_fc, w_proj, b_proj, approximate)
    return y.view(*x.shape[:-1], y.shape[-1])
