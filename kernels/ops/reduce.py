"""Column sums of partial results: the second stage of the backward passes' reductions.

Several backward kernels leave a reduction unfinished on purpose, as rows of fp32
partial sums, so that they need no atomics and stay deterministic: the norms'
weight and bias gradients (one row per persistent program), the fused linear's
bias gradient (one row per row group) and the split-K GEMM (one [M, N] slab per
K slice). `sum_rows` adds those rows up in a fixed order and rounds once to the
output's dtype, in one launch (several outputs side by side, one program per column
strip of each).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from okto.kernels import backend
from okto.kernels.autotune import launch

# Elements of partial sums one program adds per step (BLOCK_G x BLOCK_L), and the most
# rows one step takes. The norms leave ~4 rows per SM of a few thousand columns: one
# step over all of them, in narrow column strips so that enough programs run, took 3 us
# on an H100 where 64-row steps took 16 (latency-bound, each program looping 9 times).
TILE = 8192
MAX_BLOCK_G = 1024
MAX_BLOCK_L = 1024


@triton.jit
def _sum_strip(part_ptr, out_ptr, G, L, stride_g, BLOCK_G: tl.constexpr, BLOCK_L: tl.constexpr):
    """out[i] = sum over g < G of part[g * stride_g + i], for this program's BLOCK_L columns."""
    cols = tl.program_id(0).to(tl.int64) * BLOCK_L + tl.arange(0, BLOCK_L)
    mask_l = cols < L
    acc = tl.zeros([BLOCK_L], dtype=tl.float32)
    for start in range(0, G, BLOCK_G):
        rows = (start + tl.arange(0, BLOCK_G)).to(tl.int64)
        mask = (rows < G)[:, None] & mask_l[None, :]
        offs = rows[:, None] * stride_g + cols[None, :]
        acc += tl.sum(tl.load(part_ptr + offs, mask=mask, other=0.0), 0)
    tl.store(out_ptr + cols, acc.to(out_ptr.dtype.element_ty), mask=mask_l)


@triton.jit
def _sum_rows_kernel(
    part_ptr,
    part2_ptr,
    part3_ptr,
    out_ptr,
    out2_ptr,
    out3_ptr,
    G,
    L,
    stride_g,
    BLOCK_G: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    """One column strip of one output (the grid's second axis picks which): the sum of its
    G rows of partial sums. part2 and part3 (the blocks of G rows that follow the first)
    are addressed by the caller: G may arrive as a Python int when Triton specialises it
    to 1, so no pointer arithmetic on it here."""
    which = tl.program_id(1)
    if which == 0:
        _sum_strip(part_ptr, out_ptr, G, L, stride_g, BLOCK_G, BLOCK_L)
    elif which == 1:
        _sum_strip(part2_ptr, out2_ptr, G, L, stride_g, BLOCK_G, BLOCK_L)
    else:
        _sum_strip(part3_ptr, out3_ptr, G, L, stride_g, BLOCK_G, BLOCK_L)


def sum_rows(parts: torch.Tensor, groups: int, length: int, stride: int, *outs) -> None:
    """Write into each of `outs` (one to three contiguous tensors of `length` elements) the
    sum of `groups` rows of fp32 `parts` that start every `stride` elements: the first
    `groups` rows for the first output, the next `groups` for the second, and so on."""
    if length == 0:
        return
    if not 1 <= len(outs) <= 3:
        raise ValueError(f"sum_rows writes one to three outputs, got {len(outs)}")
    block_g = min(MAX_BLOCK_G, backend.next_power_of_2(max(groups, 1)))
    block_l = min(MAX_BLOCK_L, TILE // block_g)
    blocks = [parts.view(-1)[i * groups * stride :] for i in range(len(outs))]
    unused = 3 - len(outs)  # slots no program reads: the first block and output again
    launch(
        _sum_rows_kernel, (backend.cdiv(length, block_l), len(outs)), (),
        *blocks, *blocks[:1] * unused, *outs, *outs[:1] * unused, groups, length, stride,
        BLOCK_G=block_g, BLOCK_L=block_l,
    )  # fmt: skip
