"""Softmax along one dimension as a standalone op, forward and backward.

Rows up to ONE_PASS_MAX elements are read once and held in registers, several
short rows to a program so that small softmaxes still fill the GPU. Longer rows
(a vocabulary's logits) stream through in CHUNK-sized pieces: an online pass
keeps a running maximum and a rescaled sum, a second pass writes. Arithmetic is
fp32 whatever the input dtype; rows that are entirely -inf give NaN, as torch does.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from okto.kernels import backend
from okto.kernels.autotune import launch

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ONE_PASS_MAX = 16384  # longest row kept whole in registers (16 warps: 32 fp32 values a thread)
CHUNK = 4096  # piece of a longer row streamed per step
ROW_ELEMENTS = 2048  # short rows are packed until a program holds about this many elements


@triton.jit
def _row_block(rows, n, ROWS: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's ROWS rows: element offsets of their starts, which exist, column indices."""
    row = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    return row.to(tl.int64)[:, None] * n, (row < rows)[:, None], tl.arange(0, BLOCK_N)[None, :]


@triton.jit
def _softmax_fwd_kernel(
    x_ptr, y_ptr, rows, n, ROWS: tl.constexpr, BLOCK_N: tl.constexpr, ONE_PASS: tl.constexpr
):
    base, row_ok, cols = _row_block(rows, n, ROWS, BLOCK_N)
    if ONE_PASS:
        mask = row_ok & (cols < n)
        x = tl.load(x_ptr + base + cols, mask=mask, other=-float("inf")).to(tl.float32)
        e = tl.exp(x - tl.max(x, axis=1)[:, None])
        y = e / tl.sum(e, axis=1)[:, None]
        tl.store(y_ptr + base + cols, y.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        m = tl.full((ROWS,), -float("inf"), tl.float32)
        s = tl.zeros((ROWS,), tl.float32)
        for start in range(0, n, BLOCK_N):
            mask = row_ok & (start + cols < n)
            x = tl.load(x_ptr + base + start + cols, mask=mask, other=-float("inf"))
            x = x.to(tl.float32)
            m_new = tl.maximum(m, tl.max(x, axis=1))
            # A row that is -inf so far has no scale yet: shift by 0 so exp gives 0, not NaN.
            shift = tl.where(m_new == -float("inf"), 0.0, m_new)
            s = s * tl.exp(m - shift) + tl.sum(tl.exp(x - shift[:, None]), axis=1)
            m = m_new
        shift = tl.where(m == -float("inf"), 0.0, m)[:, None]
        inv = 1.0 / s[:, None]
        for start in range(0, n, BLOCK_N):
            mask = row_ok & (start + cols < n)
            x = tl.load(x_ptr + base + start + cols, mask=mask, other=-float("inf"))
            y = tl.exp(x.to(tl.float32) - shift) * inv
            tl.store(y_ptr + base + start + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _softmax_bwd_kernel(
    dy_ptr,
    y_ptr,
    dx_ptr,
    rows,
    n,
    ROWS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    ONE_PASS: tl.constexpr,
):
    """dx = y * (dy - sum(dy * y)) row by row."""
    base, row_ok, cols = _row_block(rows, n, ROWS, BLOCK_N)
    if ONE_PASS:
        mask = row_ok & (cols < n)
        y = tl.load(y_ptr + base + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + base + cols, mask=mask, other=0.0).to(tl.float32)
        dx = y * (dy - tl.sum(dy * y, axis=1)[:, None])
        tl.store(dx_ptr + base + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)
    else:
        dot = tl.zeros((ROWS,), tl.float32)
        for start in range(0, n, BLOCK_N):
            mask = row_ok & (start + cols < n)
            y = tl.load(y_ptr + base + start + cols, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + base + start + cols, mask=mask, other=0.0).to(tl.float32)
            dot += tl.sum(dy * y, axis=1)
        for start in range(0, n, BLOCK_N):
            mask = row_ok & (start + cols < n)
            y = tl.load(y_ptr + base + start + cols, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + base + start + cols, mask=mask, other=0.0).to(tl.float32)
            dx = y * (dy - dot[:, None])
            tl.store(dx_ptr + base + start + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)


def _launch(kernel, tensors, out: torch.Tensor) -> torch.Tensor:
    """Run a row kernel over [..., n] contiguous tensors with the block heuristics above."""
    n = out.shape[-1]
    rows = out.numel() // n if n else 0
    if rows == 0:
        return out
    block = backend.next_power_of_2(n)
    one_pass = block <= ONE_PASS_MAX
    if not one_pass:
        block = CHUNK
    per_program = max(1, ROW_ELEMENTS // block) if one_pass else 1
    warps = min(16, max(4, per_program * block // 1024))
    grid = (backend.cdiv(rows, per_program),)
    launch(
        kernel, grid, (), *tensors, out, rows, n,
        ROWS=per_program, BLOCK_N=block, ONE_PASS=one_pass, num_warps=warps,
    )  # fmt: skip
    return out


@backend.eager_fast_path
@torch.library.custom_op("okto::softmax", mutates_args=())
def _softmax_op(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension."""
    x = x.contiguous()
    return _launch(_softmax_fwd_kernel, (x,), backend.empty_like(x))


@_softmax_op.register_fake
def _(x):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@backend.eager_fast_path
@torch.library.custom_op("okto::softmax_backward", mutates_args=())
def _softmax_backward_op(dy: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    dy, y = dy.contiguous(), y.contiguous()
    return _launch(_softmax_bwd_kernel, (dy, y), backend.empty_like(y))


@_softmax_backward_op.register_fake
def _(dy, y):
    return torch.empty_like(y, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(output)


def _backward(ctx, dy):
    (y,) = ctx.saved_tensors
    return _softmax_backward_op(dy, y)


_softmax_op.register_autograd(_backward, setup_context=_setup_context)


def softmax_reference(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return torch.softmax(x, dim=dim)


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax of `x` (fp32, fp16 or bf16) along `dim`; the result has x's dtype."""
    backend.check_dtype(x, DTYPES, "softmax input")
    dim = backend.integer(dim, "softmax dim")
    if not -max(x.dim(), 1) <= dim < max(x.dim(), 1):
        raise backend.KernelError(f"softmax dim={dim} is out of range for shape {tuple(x.shape)}")
    if not backend.use_triton(x):
        return softmax_reference(x, dim)
    if x.dim() == 0:
        return _softmax_op(x.reshape(1)).reshape(())
    # The kernel reduces the last dimension; moved back, its result is a permuted view, so it
    # is copied to the contiguous layout torch.softmax gives whatever the input's strides.
    return _softmax_op(x.movedim(dim, -1)).movedim(-1, dim).contiguous()
