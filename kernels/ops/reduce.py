"""Column sums of partial results: the second stage of the backward passes' reductions.

Several backward kernels leave a reduction unfinished on purpose, as rows of fp32
partial sums, so that they need no atomics and stay deterministic: the norms'
weight and bias gradients (one row per persistent program), the fused linear's
bias gradient (one row per row group) and the split-K GEMM (one [M, N] slab per
K slice). `sum_rows` adds those rows up in a fixed order and rounds once to the
output's dtype, in one launch.
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
def _sum_rows_kernel(
    part_ptr,
    part2_ptr,
    out_ptr,
    out2_ptr,
    G,
    L,
    stride_g,
    TWO: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    """out[i] = sum over g < G of part[g * stride_g + i], for i < L; with TWO, out2 likewise
    from part2 (the G rows that follow, addressed by the caller: G may arrive as a Python int
    when Triton specialises it to 1, so no pointer arithmetic on it here)."""
    cols = tl.program_id(0).to(tl.int64) * BLOCK_L + tl.arange(0, BLOCK_L)
    mask_l = cols < L
    acc = tl.zeros([BLOCK_L], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_L], dtype=tl.float32)
    for start in range(0, G, BLOCK_G):
        rows = (start + tl.arange(0, BLOCK_G)).to(tl.int64)
        mask = (rows < G)[:, None] & mask_l[None, :]
        offs = rows[:, None] * stride_g + cols[None, :]
        acc += tl.sum(tl.load(part_ptr + offs, mask=mask, other=0.0), 0)
        if TWO:
            acc2 += tl.sum(tl.load(part2_ptr + offs, mask=mask, other=0.0), 0)
    tl.store(out_ptr + cols, acc.to(out_ptr.dtype.element_ty), mask=mask_l)
    if TWO:
        tl.store(out2_ptr + cols, acc2.to(out2_ptr.dtype.element_ty), mask=mask_l)


def sum_rows(
    parts: torch.Tensor,
    groups: int,
    length: int,
    stride: int,
    out: torch.Tensor,
    out2: torch.Tensor | None = None,
) -> None:
    """Write into `out` (contiguous, `length` elements) the sum of the `groups` rows of fp32
    `parts` that start every `stride` elements; `out2` gets the next `groups` rows' sum."""
    if length == 0:
        return
    block_g = min(MAX_BLOCK_G, backend.next_power_of_2(max(groups, 1)))
    block_l = min(MAX_BLOCK_L, TILE // block_g)
    launch(
        _sum_rows_kernel, (backend.cdiv(length, block_l),), (),
        parts, parts if out2 is None else parts.view(-1)[groups * stride :],
        out, out if out2 is None else out2, groups, length, stride,
        TWO=out2 is not None, BLOCK_G=block_g, BLOCK_L=block_l,
    )  # fmt: skip
