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
(GPT-2's Conv1D); pass `weight.t()` for nn.Linear's. Under autocast the fp32
parameters come in as they are: the op casts them, and the weight-gradient GEMMs
write fp32 gradients directly, where autocast would cast each one in a pass of
its own.
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
    """Whether cuBLASLt's GELU epilogues run this call (all operands in x's dtype)."""
    return approximate == "tanh" and cublaslt.supports(x, w_fc, w_proj)


def _cast(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return t if t is None or t.dtype == dtype else t.to(dtype)


def _copy_or_empty(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`t` in `dtype`, contiguous, when that is a new tensor, else an empty one (outputs may
    not alias inputs)."""
    return (
        t.to(dtype, memory_format=torch.contiguous_format) if t.dtype != dtype else t.new_empty(0)
    )


def _either(copy: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """The weight in x's dtype: `_copy_or_empty`'s copy, or the original if none was made."""
    return copy if copy.numel() else original


@backend.eager_fast_path
@torch.library.custom_op("okto::gelu_mlp", mutates_args=())
def _gelu_mlp_op(
    x: torch.Tensor,
    w_fc: torch.Tensor,
    b_fc: torch.Tensor | None,
    w_proj: torch.Tensor,
    b_proj: torch.Tensor | None,
    approximate: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(the MLP's output, Z, gelu(Z), w_fc and w_proj in x's dtype or empty) for 2-D x.

    Weights and biases in fp32 with a 16-bit x are master weights (autocast's case):
    they are cast here, the casts are kept for backward, and their gradients come back
    in fp32 straight from the weight-gradient GEMMs, with no cast pass after them.
    """
    w_fc_lp, w_proj_lp = _copy_or_empty(w_fc, x.dtype), _copy_or_empty(w_proj, x.dtype)
    w_fc16, w_proj16 = _either(w_fc_lp, w_fc), _either(w_proj_lp, w_proj)
    b_fc, b_proj = _cast(b_fc, x.dtype), _cast(b_proj, x.dtype)
    if _epilogues(approximate, x, w_fc16, w_proj16):
        h, z = cublaslt.gelu_linear(x, w_fc16, b_fc)
    else:
        z = _addmm(b_fc, x, w_fc16)
        h = F.gelu(z, approximate=approximate)
    return _addmm(b_proj, h, w_proj16), z, h, w_fc_lp, w_proj_lp


@_gelu_mlp_op.register_fake
def _(x, w_fc, b_fc, w_proj, b_proj, approximate):
    hidden = x.new_empty(x.shape[0], w_fc.shape[1])

    def cast(w):
        return x.new_empty(w.shape if w.dtype != x.dtype else (0,))

    output = x.new_empty(x.shape[0], w_proj.shape[1])
    return output, hidden, torch.empty_like(hidden), cast(w_fc), cast(w_proj)


def _setup_context(ctx, inputs, output):
    x, w_fc, b_fc, w_proj, b_proj, approximate = inputs
    _, z, h, w_fc_lp, w_proj_lp = output
    ctx.save_for_backward(x, z, h, _either(w_fc_lp, w_fc), _either(w_proj_lp, w_proj))
    ctx.approximate = approximate
    ctx.biases = (b_fc is not None, b_proj is not None)
    ctx.param_dtype = w_fc.dtype
    ctx.mark_non_differentiable(z, h, w_fc_lp, w_proj_lp)
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
    param_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dW_fc, db_fc, dW_proj, db_proj), the parameters' in `param_dtype`, each empty
    where `needs` (one flag per gradient, in that order) says it is not wanted. The
    weights come in x's dtype."""
    need_x, need_w_fc, need_b_fc, need_w_proj, need_b_proj = needs
    fused = _epilogues(approximate, x, w_fc, w_proj)
    if fused:
        dz = cublaslt.gelu_grad_matmul(dy, w_proj.t(), z)
    else:
        dz = torch.ops.aten.gelu_backward(dy @ w_proj.t(), z, approximate=approximate)
    dx = dz @ w_fc.t() if need_x else dy.new_empty(0)
    dw_fc, db_fc = _weight_grad(x, dz, need_w_fc, need_b_fc, fused, param_dtype)
    dw_proj, db_proj = _weight_grad(h, dy, need_w_proj, need_b_proj, fused, param_dtype)
    return dx, dw_fc, db_fc, dw_proj, db_proj


def _weight_grad(inputs, grad, need_weight, need_bias, fused, dtype):
    """(inputs^T @ grad, grad's column sums) in `dtype`, empty where not needed: one
    cuBLASLt GEMM when it runs. (Outputs of a custom op may not alias: one empty each.)"""
    if fused and need_weight:
        weight, bias = cublaslt.weight_grad(inputs.t(), grad, dtype, need_bias)
        return weight, bias if need_bias else grad.new_empty(0, dtype=dtype)
    weight = (inputs.t() @ grad).to(dtype) if need_weight else grad.new_empty(0, dtype=dtype)
    bias = grad.sum(0, dtype=dtype) if need_bias else grad.new_empty(0, dtype=dtype)
    return weight, bias


@_backward_op.register_fake
def _(dy, x, z, h, w_fc, w_proj, approximate, needs, param_dtype):
    shapes = (x.shape, w_fc.shape, (w_fc.shape[1],), w_proj.shape, (w_proj.shape[1],))
    dtypes = (dy.dtype, *[param_dtype] * 4)
    return tuple(
        dy.new_empty(shape if need else (0,), dtype=dtype)
        for shape, need, dtype in zip(shapes, needs, dtypes, strict=True)
    )


def _backward(ctx, dy, *_unused):
    if dy is None:  # the output did not reach the loss
        return None, None, None, None, None, None
    x, z, h, w_fc, w_proj = ctx.saved_tensors
    has_b_fc, has_b_proj = ctx.biases
    needs = list(ctx.needs_input_grad[:5])
    needs[2] = needs[2] and has_b_fc
    needs[4] = needs[4] and has_b_proj
    grads = _backward_op(dy, x, z, h, w_fc, w_proj, ctx.approximate, needs, ctx.param_dtype)
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
    params = [t for t in (w_fc, b_fc, w_proj, b_proj) if t is not None]
    backend.check_same_device(x, *params)
    backend.check_dtype(x, DTYPES, "gelu_mlp input")
    if any(t.dtype != w_fc.dtype for t in params) or w_fc.dtype not in (x.dtype, torch.float32):
        raise backend.KernelError(
            "gelu_mlp's weights and biases share one dtype: x's, or float32 (master weights "
            "for a 16-bit x)"
        )


def gelu_mlp(x, w_fc, b_fc, w_proj, b_proj, approximate="tanh"):
    """`gelu(x @ w_fc + b_fc) @ w_proj + b_proj` over x's last dimension.

    x: [..., C]; w_fc: [C, H]; w_proj: [H, C_out] (weights [in, out], any strides);
    biases optional; `approximate` as `F.gelu`'s ("tanh" or "none"). Parameters in x's
    dtype, or in fp32 for a 16-bit x (cast inside; their gradients come back in fp32).
    """
    _check(x, w_fc, b_fc, w_proj, b_proj, approximate)
    if backend.mode() == "native":
        params = (_cast(t, x.dtype) for t in (w_fc, b_fc, w_proj, b_proj))
        return gelu_mlp_reference(x, *params, approximate)
    y, *_ = _gelu_mlp_op(x.reshape(-1, x.shape[-1]), w_fc, b_fc, w_proj, b_proj, approximate)
    return y.view(*x.shape[:-1], y.shape[-1])
