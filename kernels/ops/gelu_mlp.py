"""A GELU MLP, `gelu(x @ W_fc + b_fc) @ W_proj + b_proj`, as one op whose GELU lives in
cuBLASLt's GEMM epilogues both ways.

Between two plain GEMMs the GELU costs passes over the [M, 4C] hidden tensor:
forward, Z is written, read back and gelu(Z) written; backward, c_proj's input
gradient dH is written and read back with Z, and dZ is read again for c_fc's bias
gradient. Here (`okto.kernels.cublaslt`):

- forward: c_fc's GEMM adds the bias, applies GELU and writes Z beside gelu(Z);
- backward: c_proj's input-gradient GEMM multiplies by gelu'(Z), so dZ comes out
  of it, and each weight-gradient GEMM sums its bias gradient from the operand it
  reads anyway.

The products themselves are cuBLAS's. cuBLASLt's GELU is the tanh form; the erf
form, fp32, CPU tensors and a missing cuBLASLt run the same steps as PyTorch ops
inside the op, and OKTO_KERNELS=native runs plain PyTorch. Saved for backward: x,
Z and gelu(Z), as inductor saves them for the same MLP. Weights are [in, out]
(GPT-2's Conv1D); pass `weight.t()` for nn.Linear's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from okto.kernels import backend, cublaslt

APPROXIMATIONS = ("tanh", "none")  # F.gelu's names
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _addmm(bias: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.mm(a, b) if bias is None else torch.addmm(bias, a, b)


def _epilogues(approximate: str, x: torch.Tensor, w_fc: torch.Tensor, w_proj: torch.Tensor):
    """Whether cuBLASLt's GELU epilogues run this call."""
    return approximate == "tanh" and cublaslt.supports(x, w_fc, w_proj)


@backend.eager_fast_path
@torch.library.custom_op("okto::gelu_mlp", mutates_args=())
def _gelu_mlp_op(
    x: torch.Tensor,
    w_fc: torch.Tensor,
    b_fc: torch.Tensor | None,
    w_proj: torch.Tensor,
    b_proj: torch.Tensor | None,
    approximate: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(the MLP's output, Z, gelu(Z)) for 2-D x; Z and gelu(Z) are kept for backward."""
    if _epilogues(approximate, x, w_fc, w_proj):
        h, z = cublaslt.gelu_linear(x, w_fc, b_fc)
    else:
        z = _addmm(b_fc, x, w_fc)
        h = F.gelu(z, approximate=approximate)
    return _addmm(b_proj, h, w_proj), z, h


@_gelu_mlp_op.register_fake
def _(x, w_fc, b_fc, w_proj, b_proj, approximate):
    hidden = x.new_empty(x.shape[0], w_fc.shape[1])
    return x.new_empty(x.shape[0], w_proj.shape[1]), hidden, torch.empty_like(hidden)


def _setup_context(ctx, inputs, output):
    x, w_fc, b_fc, w_proj, b_proj, approximate = inputs
    _, z, h = output
    ctx.save_for_backward(x, z, h, w_fc, w_proj)
    ctx.approximate = approximate
    ctx.biases = (b_fc is not None, b_proj is not None)
    ctx.mark_non_differentiable(z, h)
    ctx.set_materialize_grads(False)


@backend.eager_fast_path
@torch.library.custom_op("okto::gelu_mlp_backward", mutates_args=())
def _backward_op(
    dy: torch.Tensor,
    x: torch.Tensor,
    z: torch.Tensor,
    h: torch.Tensor,
    w_fc: torch.Tensor,
    w_proj: torch.Tensor,
    approximate: str,
    needs: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dW_fc, db_fc, dW_proj, db_proj), each empty where `needs` (one flag per
    gradient, in that order) says it is not wanted."""
    need_x, need_w_fc, need_b_fc, need_w_proj, need_b_proj = needs
    fused = _epilogues(approximate, x, w_fc, w_proj)
    if fused:
        dz = cublaslt.gelu_grad_matmul(dy, w_proj.t(), z)
    else:
        dz = torch.ops.aten.gelu_backward(dy @ w_proj.t(), z, approximate=approximate)
    dx = dz @ w_fc.t() if need_x else dy.new_empty(0)
    dw_fc, db_fc = _weight_grad(x, dz, need_w_fc, need_b_fc, fused)
    dw_proj, db_proj = _weight_grad(h, dy, need_w_proj, need_b_proj, fused)
    return dx, dw_fc, db_fc, dw_proj, db_proj


def _weight_grad(inputs, grad, need_weight, need_bias, fused):
    """(inputs^T @ grad, grad's column sums), empty where not needed: in one cuBLASLt GEMM
    when both are wanted. (Outputs of a custom op may not alias: one empty each.)"""
    if need_weight and need_bias and fused:
        return cublaslt.matmul_column_sums(inputs.t(), grad)
    weight = inputs.t() @ grad if need_weight else grad.new_empty(0)
    return weight, grad.sum(0) if need_bias else grad.new_empty(0)


@_backward_op.register_fake
def _(dy, x, z, h, w_fc, w_proj, approximate, needs):
    shapes = (x.shape, w_fc.shape, (w_fc.shape[1],), w_proj.shape, (w_proj.shape[1],))
    return tuple(dy.new_empty(s if need else (0,)) for s, need in zip(shapes, needs, strict=True))


def _backward(ctx, dy, _dz, _dh):
    if dy is None:  # the output did not reach the loss
        return None, None, None, None, None, None
    x, z, h, w_fc, w_proj = ctx.saved_tensors
    has_b_fc, has_b_proj = ctx.biases
    needs = list(ctx.needs_input_grad[:5])
    needs[2] = needs[2] and has_b_fc
    needs[4] = needs[4] and has_b_proj
    grads = _backward_op(dy, x, z, h, w_fc, w_proj, ctx.approximate, needs)
    return (*(g if need else None for g, need in zip(grads, needs, strict=True)), None)


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
    backend.check_dtype(x, DTYPES, "gelu_mlp input")
    if any(t.dtype != x.dtype for t in tensors):
        raise backend.KernelError("gelu_mlp's input, weights and biases must share one dtype")


def gelu_mlp(x, w_fc, b_fc, w_proj, b_proj, approximate="tanh"):
    """`gelu(x @ w_fc + b_fc) @ w_proj + b_proj` over x's last dimension.

    x: [..., C]; w_fc: [C, H]; w_proj: [H, C_out] (weights [in, out], any strides);
    biases optional; `approximate` as `F.gelu`'s ("tanh" or "none"). One dtype for all.
    """
    _check(x, w_fc, b_fc, w_proj, b_proj, approximate)
    if backend.mode() == "native":
        return gelu_mlp_reference(x, w_fc, b_fc, w_proj, b_proj, approximate)
    y, _, _ = _gelu_mlp_op(x.reshape(-1, x.shape[-1]), w_fc, b_fc, w_proj, b_proj, approximate)
    return y.view(*x.shape[:-1], y.shape[-1])
