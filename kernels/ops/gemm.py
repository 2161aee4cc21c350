"""GEMM with a fused epilogue, `act(A @ B + bias) + residual`, forward and backward.

Two Triton kernels compute the product, both accumulating in fp32:

- `_gemm_tma_kernel` (Hopper): persistent programs, one per SM, walk the output
  tiles in grouped order so that programs running together share A and B tiles
  in L2. Operands arrive through TMA descriptors built on the device; a
  transposed operand is loaded K-major and transposed in shared memory, so
  `x @ w.T` costs no copy. It takes 2-D fp16/bf16 problems whose layouts TMA
  accepts (a unit stride, 16-byte aligned rows) and outputs whose rows are
  16-byte aligned (N a multiple of 8).
- `_gemm_kernel`: one tile per program with masked pointer loads; any strides,
  batches, fp32 (tf32 or exact), the interpreter and pre-Hopper GPUs. This is
  the path that is always correct.

The epilogue (bias, GELU in its erf or tanh form, residual) runs on the fp32
accumulator before the single rounding to the output dtype. For backward the
pre-activation Z is saved when a gradient is needed (and recomputed if it was
not); dZ = dY * gelu'(Z) and the bias gradient come from one fused pass over dY,
and dA = dZ @ B^T, dB = A^T @ dZ run on the same kernels with the transposes
expressed as strides.

`OKTO_GEMM=auto|tma|simple` picks the kernel: `auto` uses TMA on sm_90+ where
the layout allows it, `tma` does so in the interpreter too (tests), `simple`
never. (Triton's warp-specialised loops, `tl.range(warp_specialize=True)`, did
not compile for sm_90 with Triton 3.6: docs/kernel-notes.md §7.)
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from okto.kernels import backend, environment, tma
from okto.kernels.autotune import autotune, config, launch
from okto.kernels.ops.activations import gelu, gelu_grad
from okto.kernels.ops.reduce import sum_rows

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Public activation names -> the epilogue's ACTIVATION code (0 none, 1 erf GELU, 2 tanh GELU).
ACTIVATIONS = {"none": 0, "gelu": 1, "gelu_tanh": 2}
WEIGHT_LAYOUTS = ("out_in", "in_out")


# ---------------------------------------------------------------------------
# Device code shared by both kernels


@triton.jit
def _tile_coords(tile_id, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """Grouped ("L2-swizzled") order: GROUP_M row tiles advance together along N."""
    num_in_group = GROUP_M * num_pid_n
    first_m = (tile_id // num_in_group) * GROUP_M
    group_size = min(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (tile_id % num_in_group) % group_size
    pid_n = (tile_id % num_in_group) // group_size
    return pid_m, pid_n


@triton.jit
def _epilogue(
    acc,
    offs_m,
    offs_n,
    M,
    N,
    bias_ptr,
    r_ptr,
    stride_rm,
    stride_rn,
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
):
    """(pre-activation, output) of one fp32 tile: act(acc + bias) + residual."""
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0)
        acc = acc + bias.to(tl.float32)[None, :]
    pre = acc
    if ACTIVATION != 0:
        acc = gelu(acc, ACTIVATION == 2)
    if HAS_RESIDUAL:
        mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
        r_ptrs = r_ptr + offs_m.to(tl.int64)[:, None] * stride_rm + offs_n[None, :] * stride_rn
        acc = acc + tl.load(r_ptrs, mask=mask, other=0.0).to(tl.float32)
    return pre, acc


# ---------------------------------------------------------------------------
# The always-correct kernel: one output tile per program, pointer loads


def _simple_configs() -> list[triton.Config]:
    # In the interpreter only the first is used: small tiles so tests see several tiles and K steps.
    # On the GPU the first fits fp32 operands too (OKTO_AUTOTUNE=first takes it untimed).
    small = [config(BLOCK_M=32, BLOCK_N=32, BLOCK_K=16, GROUP_M=2, num_warps=4, num_stages=1)]
    return (small if backend.interpreting() else []) + [
        config(BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, GROUP_M=8, num_warps=4, num_stages=4),
        config(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3),
        config(BLOCK_M=256, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3),
        config(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=4),
        config(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=4),
        config(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=4),
        config(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=4),
        config(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=3),
        config(BLOCK_M=32, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=4),
        config(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, GROUP_M=8, num_warps=2, num_stages=5),
    ]


_EPILOGUE_KEY = ["HAS_BIAS", "ACTIVATION", "HAS_RESIDUAL", "SAVE_PREACT"]


@autotune(
    _simple_configs(),
    key=["M_BUCKET", "N", "K", "LAYOUT", "INPUT_PRECISION", *_EPILOGUE_KEY],
)
@triton.jit
def _gemm_kernel(
    a_ptr,
    b_ptr,
    c_ptr,
    p_ptr,
    bias_ptr,
    r_ptr,
    M,
    N,
    K,
    stride_ab,
    stride_am,
    stride_ak,
    stride_bb,
    stride_bk,
    stride_bn,
    stride_rb,
    stride_rm,
    stride_rn,
    M_BUCKET,  # autotune key only: M (times the batch) rounded up to a power of two
    LAYOUT,  # autotune key only: which operands have a unit stride
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    SAVE_PREACT: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    EVEN_K: tl.constexpr,  # K is a multiple of every BLOCK_K in the configurations (64)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pid_m, pid_n = _tile_coords(tl.program_id(0), num_pid_m, num_pid_n, GROUP_M)
    batch = tl.program_id(1).to(tl.int64)
    a_ptr += batch * stride_ab
    b_ptr += batch * stride_bb
    c_ptr += batch * M * N
    p_ptr += batch * M * N
    r_ptr += batch * stride_rb

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    # Out-of-range rows and columns wrap round instead of being masked: their results
    # are never stored, the main loop needs only the K mask, and (unlike clamping with
    # tl.where) the modulo keeps the contiguity the compiler needs to vectorise loads.
    rows = (offs_m % M).to(tl.int64)
    cols = (offs_n % N).to(tl.int64)
    a_ptrs = a_ptr + rows[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + cols[None, :] * stride_bn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            k_left = K - k * BLOCK_K
            a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
            b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    pre, out = _epilogue(
        acc, offs_m, offs_n, M, N, bias_ptr, r_ptr, stride_rm, stride_rn,
        HAS_BIAS, ACTIVATION, HAS_RESIDUAL,
    )  # fmt: skip
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    offs_c = offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
    if SAVE_PREACT:
        tl.store(p_ptr + offs_c, pre.to(p_ptr.dtype.element_ty), mask=mask)
    tl.store(c_ptr + offs_c, out.to(c_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------
# The Hopper kernel: persistent, TMA descriptors, grouped tile order


def _tma_configs() -> list[triton.Config]:
    def tma(bm, bn, bk, split, warps, stages, flatten=True, group=8):
        return config(
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=group, EPILOGUE_SPLIT=split,
            FLATTEN=flatten, num_warps=warps, num_stages=stages,
        )  # fmt: skip

    if backend.interpreting():  # small tiles: several per program, a split epilogue, K steps
        return [tma(32, 32, 16, 2, 4, 1)]
    shapes = [
        (128, 256, 64, 2, 8, 3),
        (128, 256, 64, 1, 8, 3),
        (128, 256, 64, 2, 8, 4),
        (256, 128, 64, 2, 8, 3),
        (128, 128, 64, 1, 8, 4),
        (128, 128, 64, 1, 4, 4),
        (128, 128, 64, 2, 4, 3),
        (128, 128, 128, 1, 8, 3),
        (64, 256, 64, 1, 4, 4),
    ]
    # Taller groups keep more of B in L2 on wide outputs (GPT-2's head: 0.99x cuBLAS, not 0.96x).
    return [tma(*s) for s in shapes] + [
        tma(*shapes[0], flatten=False),
        tma(*shapes[0], group=16),
    ]


@triton.jit
def _tma_store_tile(
    acc,
    off_m,
    off_n,
    row,  # the row C is stored at: off_m, or off_m within its K slice's slab
    c_desc,
    p_desc,
    bias_ptr,
    r_ptr,
    M,
    N,
    stride_rm,
    stride_rn,
    dtype: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    SAVE_PREACT: tl.constexpr,
    TILE_M: tl.constexpr,
    TILE_N: tl.constexpr,
):
    offs_m = off_m + tl.arange(0, TILE_M)
    offs_n = off_n + tl.arange(0, TILE_N)
    pre, out = _epilogue(
        acc, offs_m, offs_n, M, N, bias_ptr, r_ptr, stride_rm, stride_rn,
        HAS_BIAS, ACTIVATION, HAS_RESIDUAL,
    )  # fmt: skip
    if SAVE_PREACT:
        p_desc.store([off_m, off_n], pre.to(dtype))
    c_desc.store([row, off_n], out.to(dtype))


@autotune(
    _tma_configs(),
    key=["M_BUCKET", "N", "K", "A_COL_MAJOR", "B_COL_MAJOR", "SPLIT_K", *_EPILOGUE_KEY],
)
@triton.jit
def _gemm_tma_kernel(
    a_ptr,
    b_ptr,
    c_ptr,
    p_ptr,
    bias_ptr,
    r_ptr,
    M,
    N,
    K,
    M_PAD,  # rows of one K slice's partial sums in C when SPLIT_K > 1 (else M)
    stride_a,  # the row stride of A as stored: [M, K], or [K, M] when A_COL_MAJOR
    stride_b,  # the row stride of B as stored: [K, N], or [N, K] when B_COL_MAJOR
    stride_rm,
    stride_rn,
    M_BUCKET,  # autotune key only
    A_COL_MAJOR: tl.constexpr,
    B_COL_MAJOR: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    SAVE_PREACT: tl.constexpr,
    SPLIT_K: tl.constexpr,
    NUM_SMS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    EPILOGUE_SPLIT: tl.constexpr,
    FLATTEN: tl.constexpr,
):
    if A_COL_MAJOR:
        a_desc = tl.make_tensor_descriptor(
            a_ptr, shape=[K, M], strides=[stride_a, 1], block_shape=[BLOCK_K, BLOCK_M]
        )
    else:
        a_desc = tl.make_tensor_descriptor(
            a_ptr, shape=[M, K], strides=[stride_a, 1], block_shape=[BLOCK_M, BLOCK_K]
        )
    if B_COL_MAJOR:
        b_desc = tl.make_tensor_descriptor(
            b_ptr, shape=[N, K], strides=[stride_b, 1], block_shape=[BLOCK_N, BLOCK_K]
        )
    else:
        b_desc = tl.make_tensor_descriptor(
            b_ptr, shape=[K, N], strides=[stride_b, 1], block_shape=[BLOCK_K, BLOCK_N]
        )
    dtype = c_ptr.dtype.element_ty
    SUB_N: tl.constexpr = BLOCK_N // EPILOGUE_SPLIT
    # With SPLIT_K > 1, C is fp32 scratch: one [M_PAD, N] slab of partial sums per K slice.
    c_desc = tl.make_tensor_descriptor(
        c_ptr, shape=[SPLIT_K * M_PAD, N], strides=[N, 1], block_shape=[BLOCK_M, SUB_N]
    )
    if SAVE_PREACT:
        p_desc = tl.make_tensor_descriptor(
            p_ptr, shape=[M, N], strides=[N, 1], block_shape=[BLOCK_M, SUB_N]
        )
    else:
        p_desc = c_desc

    start = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_tiles = num_pid_m * num_pid_n
    # Work unit w is output tile w % num_tiles over K slice w // num_tiles; every slice has
    # the same trip count (the last may run past K, where TMA reads zeros).
    k_steps = tl.cdiv(tl.cdiv(K, BLOCK_K), SPLIT_K)
    # The epilogue recomputes its unit from a counter of its own, so the pipeliner
    # can overlap it with the next unit's first loads (as in Triton's tutorial).
    work_c = start - NUM_SMS
    for work in tl.range(start, num_tiles * SPLIT_K, NUM_SMS, flatten=FLATTEN):
        pid_m, pid_n = _tile_coords(work % num_tiles, num_pid_m, num_pid_n, GROUP_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        k_first = (work // num_tiles) * k_steps
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for ki in range(k_steps):
            off_k = (k_first + ki) * BLOCK_K
            # K-major tiles (transposed operands) are transposed in shared memory.
            a = a_desc.load([off_k, off_m]).T if A_COL_MAJOR else a_desc.load([off_m, off_k])
            b = b_desc.load([off_n, off_k]).T if B_COL_MAJOR else b_desc.load([off_k, off_n])
            acc = tl.dot(a, b, acc)

        work_c += NUM_SMS
        pid_m, pid_n = _tile_coords(work_c % num_tiles, num_pid_m, num_pid_n, GROUP_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        row = (work_c // num_tiles) * M_PAD + off_m
        if EPILOGUE_SPLIT == 2:
            # Two half-width stores: half the shared-memory staging, fewer live registers.
            halves = tl.permute(tl.reshape(acc, (BLOCK_M, 2, SUB_N)), (0, 2, 1))
            acc0, acc1 = tl.split(halves)
            _tma_store_tile(
                acc0, off_m, off_n, row, c_desc, p_desc, bias_ptr, r_ptr, M, N, stride_rm,
                stride_rn, dtype, HAS_BIAS, ACTIVATION, HAS_RESIDUAL, SAVE_PREACT, BLOCK_M, SUB_N,
            )  # fmt: skip
            _tma_store_tile(
                acc1, off_m, off_n + SUB_N, row, c_desc, p_desc, bias_ptr, r_ptr, M, N, stride_rm,
                stride_rn, dtype, HAS_BIAS, ACTIVATION, HAS_RESIDUAL, SAVE_PREACT, BLOCK_M, SUB_N,
            )  # fmt: skip
        else:
            _tma_store_tile(
                acc, off_m, off_n, row, c_desc, p_desc, bias_ptr, r_ptr, M, N, stride_rm,
                stride_rn, dtype, HAS_BIAS, ACTIVATION, HAS_RESIDUAL, SAVE_PREACT, BLOCK_M, BLOCK_N,
            )  # fmt: skip


# ---------------------------------------------------------------------------
# Backward's elementwise pass: dZ = dY * gelu'(Z) and the bias gradient


def _act_grad_configs() -> list[triton.Config]:
    # Memory-bound (read dY and Z, write dZ): tiles of 4-8K elements, 16-32 a thread.
    if backend.interpreting():  # several row steps and column blocks at the tests' sizes
        return [config(BLOCK_M=8, BLOCK_N=32, num_warps=4, num_stages=1)]
    return [
        config(BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=1)
        for bm, bn, w in ((32, 128, 4), (16, 256, 4), (32, 256, 8), (64, 128, 8), (8, 512, 4))
    ]


@autotune(_act_grad_configs(), key=["N", "ACTIVATION", "HAS_BIAS"])
@triton.jit
def _act_grad_kernel(
    dy_ptr,
    z_ptr,
    dz_ptr,
    part_ptr,
    M,
    N,
    ACTIVATION: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """dZ = dY * gelu'(Z) for one column block of one row group (rows g, g + G, ... in
    BLOCK_M steps), and that group's partial bias gradient (the column sums of dZ) in fp32."""
    group = tl.program_id(0)
    groups = tl.num_programs(0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    dbias = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(group * BLOCK_M, M, groups * BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        mask = (offs_m < M)[:, None] & mask_n[None, :]
        offs = offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
        dz = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if ACTIVATION != 0:
            z = tl.load(z_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            dz = dz * gelu_grad(z, ACTIVATION == 2)
            tl.store(dz_ptr + offs, dz.to(dz_ptr.dtype.element_ty), mask=mask)
        if HAS_BIAS:
            dbias += tl.sum(dz, axis=0)
    if HAS_BIAS:
        tl.store(part_ptr + group * N + offs_n, dbias, mask=mask_n)


# Row groups of the activation-gradient pass: its bias gradient leaves as this many
# partial rows (few enough for a cheap final sum, enough programs to fill the GPU with
# the column blocks), each group taking at least ACT_GRAD_MIN_ROWS rows.
ACT_GRAD_GROUPS = 64
ACT_GRAD_MIN_ROWS = 128


# ---------------------------------------------------------------------------
# Launchers


def _path() -> str:
    return environment.setting("OKTO_GEMM")


def _tf32_allowed() -> bool:
    try:
        return bool(torch.backends.cuda.matmul.allow_tf32)
    except RuntimeError:  # torch refuses the legacy flag once the new fp32_precision API was used
        return torch.backends.cuda.matmul.fp32_precision == "tf32"


@functools.cache
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _tma_layout(t: torch.Tensor) -> tuple[bool, int] | None:
    """(column-major?, row stride as stored) if TMA can read 2-D `t` in place, else None."""
    item = t.element_size()
    if t.data_ptr() % 16:
        return None
    rows, cols = t.stride()
    if cols == 1 and (rows * item) % 16 == 0:
        return False, rows
    if rows == 1 and (cols * item) % 16 == 0:
        return True, cols
    return None


def _tma_layouts(a: torch.Tensor, b: torch.Tensor, n: int, k: int) -> tuple | None:
    """The (column-major?, row stride) of A and B when the TMA kernel takes this problem."""
    path = _path()
    if path == "simple" or k == 0 or not tma.usable(a, forced=path == "tma"):
        return None
    if a.dtype not in (torch.float16, torch.bfloat16) or (n * a.element_size()) % 16:
        return None
    a_layout, b_layout = _tma_layout(a), _tma_layout(b)
    return None if a_layout is None or b_layout is None else (a_layout, b_layout)


SPLIT_K_MIN_K = 4096  # shorter reductions are never split
SPLIT_K_MIN_SLICE = 512  # nor into slices shorter than this
SPLIT_K_MAX = 8
# The tile the model counts in (the autotuner's usual winner on sm_90), and the HBM
# traffic that costs as much time as one step of it along K: an SM takes a 128x256 tile
# one element further along K (2*128*256 FLOPs) in about the time HBM moves this many
# bytes (Hopper: ~5 dense fp16 TFLOP/s per SM, ~3 TB/s).
_MODEL_TILE = (128, 256)
_TILE_STEP_BYTES = 40_000


@functools.lru_cache(maxsize=1024)
def _split_k(m: int, n: int, k: int, sms: int) -> int:
    """K slices for a plain GEMM with few output tiles and a long reduction (1: no split).

    Too few tiles leave SMs idle (GPT-2's weight gradients: a 768x3072 output is 72
    tiles of 128x256 for 132 SMs). Splitting K makes more work units; each slice
    costs an fp32 [M, N] write and read back (`reduce.sum_rows`). The model: waves
    of units times the slice length, plus that traffic.
    """
    tiles = backend.cdiv(m, _MODEL_TILE[0]) * backend.cdiv(n, _MODEL_TILE[1])
    if k < SPLIT_K_MIN_K or tiles >= 2 * sms:
        return 1

    def cost(s: int) -> float:
        waves = backend.cdiv(tiles * s, sms)
        traffic = s * m * n * 8 if s > 1 else 0
        return waves * backend.cdiv(k, s) + traffic / _TILE_STEP_BYTES

    splits = [s for s in range(1, SPLIT_K_MAX + 1) if s == 1 or k // s >= SPLIT_K_MIN_SLICE]
    return min(splits, key=cost)


def _launch_tma(a, b, layouts, out, preact, bias, residual, m, n, k, r_strides, flags):
    (a_col, stride_a), (b_col, stride_b) = layouts
    sms = 3 if backend.interpreting() else _sm_count(a.device)
    plain = not any(flags.values())
    split = _split_k(m, n, k, sms) if plain else 1
    # Partial sums go to fp32 slabs whose row count is a multiple of every BLOCK_M.
    m_pad = backend.cdiv(m, 256) * 256 if split > 1 else m
    target = (
        backend.empty(split * m_pad, n, dtype=torch.float32, device=a.device) if split > 1 else out
    )

    def grid(meta):
        tiles = backend.cdiv(m, meta["BLOCK_M"]) * backend.cdiv(n, meta["BLOCK_N"])
        return (min(sms, tiles * split),)

    tma.set_workspace()
    m_bucket = backend.next_power_of_2(m)
    launch(
        _gemm_tma_kernel, grid, (m_bucket, n, k),
        a, b, target, preact, bias, residual, m, n, k, m_pad, stride_a, stride_b, *r_strides,
        m_bucket, A_COL_MAJOR=a_col, B_COL_MAJOR=b_col, SPLIT_K=split, NUM_SMS=sms, **flags,
    )  # fmt: skip
    if split > 1:  # a fixed-order sum: deterministic, unlike atomics
        sum_rows(target, split, m * n, m_pad * n, out)


def _launch_simple(a3, b3, out, preact, bias, residual3, batch, m, n, k, flags):
    """a3 [B|1, M, K], b3 [B|1, K, N] (a batch stride of 0 broadcasts), out [B, M, N]."""
    layout = 2 * (a3.stride(2) == 1) + (b3.stride(2) == 1)
    # "ieee" (exact fp32 without tensor cores) only where asked; 16-bit inputs ignore it.
    precision = "ieee" if a3.dtype == torch.float32 and not _tf32_allowed() else "tf32"

    def grid(meta):
        return (backend.cdiv(m, meta["BLOCK_M"]) * backend.cdiv(n, meta["BLOCK_N"]), batch)

    m_bucket = backend.next_power_of_2(m * batch)
    launch(
        _gemm_kernel, grid, (m_bucket, n, k, layout),
        a3, b3, out, preact, bias, residual3, m, n, k,
        _batch_stride(a3), a3.stride(1), a3.stride(2),
        _batch_stride(b3), b3.stride(1), b3.stride(2),
        *residual3.stride(), m_bucket, layout,
        INPUT_PRECISION=precision, EVEN_K=k % 64 == 0, **flags,
    )  # fmt: skip


def _batch_stride(t3: torch.Tensor) -> int:
    return 0 if t3.shape[0] == 1 else t3.stride(0)


def _out_shape(a: torch.Tensor, b: torch.Tensor) -> tuple[int, ...]:
    batch = a.shape[:-2] if a.dim() == 3 else b.shape[:-2]
    return (*batch, a.shape[-2], b.shape[-1])


def _merged_rows(t: torch.Tensor) -> torch.Tensor | None:
    """A [B, R, C] tensor as a [B*R, C] view, or None if its strides do not allow one."""
    try:
        return t.view(-1, t.shape[-1])
    except RuntimeError:
        return None


def _gemm_forward(a, b, bias, residual, activation, save_preact):
    shape = _out_shape(a, b)
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    out = backend.empty(*shape, dtype=a.dtype, device=a.device)
    saving = save_preact and activation != "none"
    preact = backend.empty(*shape, dtype=a.dtype, device=a.device) if saving else a.new_empty(0)
    if out.numel() == 0:
        return out, preact
    flags = {
        "HAS_BIAS": bias is not None,
        "ACTIVATION": ACTIVATIONS[activation],
        "HAS_RESIDUAL": residual is not None,
        "SAVE_PREACT": saving,
    }
    # Never read when its flag is off; read at unit stride (an expanded bias was read as
    # if contiguous).
    bias_arg = out if bias is None else bias.contiguous()

    # A batch against one shared B is one tall GEMM when A (and the residual) merge rows.
    a2 = a if a.dim() == 2 else None
    r2 = residual
    if a.dim() == 3 and b.dim() == 2:
        a2 = _merged_rows(a)
        r2 = None if residual is None else _merged_rows(residual)
        if residual is not None and r2 is None:
            a2 = None
    if a2 is not None and b.dim() == 2:
        rows = a2.shape[0]
        r_strides = (0, 0) if r2 is None else r2.stride()
        layouts = _tma_layouts(a2, b, n, k)
        if layouts is not None:
            res_arg = out if r2 is None else r2
            _launch_tma(
                a2, b, layouts, out, preact, bias_arg, res_arg, rows, n, k, r_strides, flags
            )
            return out, preact
        a3, b3, batch, m = a2.unsqueeze(0), b.unsqueeze(0), 1, rows
        res3 = out.view(1, rows, n) if r2 is None else r2.unsqueeze(0)
    else:
        a3 = a if a.dim() == 3 else a.unsqueeze(0)
        b3 = b if b.dim() == 3 else b.unsqueeze(0)
        batch = shape[0]
        res3 = out if residual is None else residual
    if residual is None:
        res3 = res3.as_strided(res3.shape, (0, 0, 0))  # dummy, never read
    _launch_simple(a3, b3, out, preact, bias_arg, res3, batch, m, n, k, flags)
    return out, preact


def _act_grad(dy: torch.Tensor, z: torch.Tensor, activation: str, has_bias: bool):
    """(dZ as [rows, N] or empty, bias gradient in dY's dtype or empty) for contiguous
    [rows, N] dY and Z: one pass over them, then `reduce.sum_rows` over the partial rows."""
    rows, n = dy.shape
    act = ACTIVATIONS[activation]
    dz = backend.empty(rows, n, dtype=dy.dtype, device=dy.device) if act else dy.new_empty(0)
    dbias = backend.empty(n, dtype=dy.dtype, device=dy.device) if has_bias else dy.new_empty(0)
    if not dy.numel():
        if has_bias:
            dbias.zero_()
        return dz, dbias
    groups = max(1, min(ACT_GRAD_GROUPS, backend.cdiv(rows, ACT_GRAD_MIN_ROWS)))
    parts = backend.empty(groups, n, dtype=torch.float32, device=dy.device) if has_bias else dy
    launch(
        _act_grad_kernel, lambda meta: (groups, backend.cdiv(n, meta["BLOCK_N"])), (n,),
        dy, z if act else dy, dz if act else dy, parts, rows, n,
        ACTIVATION=act, HAS_BIAS=has_bias,
    )  # fmt: skip
    if has_bias:
        sum_rows(parts, groups, n, n, dbias)
    return dz, dbias


# ---------------------------------------------------------------------------
# Custom ops and autograd


@backend.eager_fast_path
@torch.library.custom_op("okto::gemm", mutates_args=())
def _gemm_op(
    a: torch.Tensor,
    b: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    activation: str,
    save_preact: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(act(a @ b + bias) + residual, the pre-activation if saved else an empty tensor)."""
    return _gemm_forward(a, b, bias, residual, activation, save_preact)


@_gemm_op.register_fake
def _(a, b, bias, residual, activation, save_preact):
    shape = _out_shape(a, b)
    saving = save_preact and activation != "none"
    return a.new_empty(shape), a.new_empty(shape if saving else (0,))


@backend.eager_fast_path
@torch.library.custom_op("okto::gemm_act_backward", mutates_args=())
def _act_grad_op(
    dy: torch.Tensor, z: torch.Tensor, activation: str, has_bias: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dY * gelu'(Z) or empty without activation, bias gradient or empty) for [rows, N] inputs."""
    return _act_grad(dy.contiguous(), z.contiguous(), activation, has_bias)


@_act_grad_op.register_fake
def _(dy, z, activation, has_bias):
    dz = dy.new_empty(dy.shape if activation != "none" else (0,))
    return dz, dy.new_empty((dy.shape[1],) if has_bias else (0,))


def _setup_context(ctx, inputs, output):
    a, b, bias, _, activation, _ = inputs
    _, preact = output
    ctx.save_for_backward(a, b, bias, preact)
    ctx.activation = activation
    ctx.mark_non_differentiable(preact)
    # No zeros for the pre-activation's (never used) gradient: that would be an [M, N]
    # allocation and memset on every backward.
    ctx.set_materialize_grads(False)


def _weight_grad(a, b, dz, n):
    """dB in B's own memory order: for a column-major 2-D B (nn.Linear's weight.t()) the
    product is formed transposed, dZ^T A, so that the weight's gradient comes out
    contiguous in the weight's layout instead of needing a copy."""
    if b.dim() == 2 and a.dim() == 3:  # B was shared by A's batch: reduce over all rows
        a, dz = a.reshape(-1, a.shape[-1]), dz.reshape(-1, n)
    if b.dim() == 2 and b.stride(0) == 1 and b.stride(1) != 1:
        return _gemm_op(dz.mT, a, None, None, "none", False)[0].mT
    return _gemm_op(a.mT, dz, None, None, "none", False)[0]


def _backward(ctx, dout, _dpreact):
    a, b, bias, preact = ctx.saved_tensors
    need_a, need_b, need_bias, need_res = ctx.needs_input_grad[:4]
    if dout is None:  # the output did not reach the loss
        return None, None, None, None, None, None
    activation = ctx.activation
    n = dout.shape[-1]
    dz, dbias = dout, None
    if activation != "none" or need_bias:
        if activation != "none" and preact.numel() == 0:  # not saved: recompute it
            preact = _gemm_op(a, b, bias, None, "none", False)[0]
        flat_z = preact.reshape(-1, n) if activation != "none" else dout.reshape(-1, n)
        dz_flat, dbias = _act_grad_op(dout.reshape(-1, n), flat_z, activation, need_bias)
        if activation != "none":
            dz = dz_flat.view(dout.shape)
        dbias = dbias if need_bias else None
    da = db = None
    if need_a:
        da = _gemm_op(dz, b.mT, None, None, "none", False)[0]
        if a.dim() == 2 and da.dim() == 3:  # A was broadcast over B's batch
            da = da.sum(0)
    if need_b:
        db = _weight_grad(a, b, dz, n)
    return da, db, dbias, dout if need_res else None, None, None


_gemm_op.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------
# Public functions


def gemm_reference(
    a: torch.Tensor,
    b: torch.Tensor,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    activation: str = "none",
) -> torch.Tensor:
    """`act(a @ b + bias) + residual` in PyTorch: the oracle and the path without Triton."""
    out = torch.matmul(a, b)
    if bias is not None:
        out = out + bias
    if activation != "none":
        approximate = "tanh" if activation == "gelu_tanh" else "none"
        out = torch.nn.functional.gelu(out, approximate=approximate)
    if residual is not None:
        out = out + residual
    return out


def _check_tensors(bias, residual, **operands) -> None:
    """The operands must be tensors; bias and residual tensors or None."""
    for what, t in operands.items():
        backend.check_tensor(t, what)
    for what, t in (("bias", bias), ("residual", residual)):
        if t is not None:
            backend.check_tensor(t, what)


def _check(a, b, bias, residual, activation) -> None:
    _check_tensors(a=a, b=b, bias=bias, residual=residual)
    if activation not in ACTIVATIONS:
        names = ", ".join(repr(n) for n in ACTIVATIONS)
        raise backend.KernelError(f"activation={activation!r}; use one of {names}")
    if a.dim() not in (2, 3) or b.dim() not in (2, 3):
        raise backend.KernelError(
            f"matmul takes 2-D or 3-D operands, got shapes {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.shape[-1] != b.shape[-2]:
        raise backend.KernelError(
            f"inner dimensions differ: {tuple(a.shape)} @ {tuple(b.shape)} "
            f"({a.shape[-1]} != {b.shape[-2]})"
        )
    if a.dim() == 3 and b.dim() == 3 and a.shape[0] != b.shape[0]:
        raise backend.KernelError(
            f"batch sizes differ: {tuple(a.shape)} @ {tuple(b.shape)} ({a.shape[0]} != {b.shape[0]})"
        )
    shape = _out_shape(a, b)
    if bias is not None and tuple(bias.shape) != (shape[-1],):
        raise backend.KernelError(f"bias has shape {tuple(bias.shape)}; expected ({shape[-1]},)")
    if residual is not None and tuple(residual.shape) != shape:
        raise backend.KernelError(
            f"residual has shape {tuple(residual.shape)}; expected the output's {shape}"
        )
    tensors = [t for t in (a, b, bias, residual) if t is not None]
    backend.check_same_device(*tensors)
    for t, what in zip(tensors, ("A", "B", "bias", "residual")[: len(tensors)], strict=True):
        if t.dtype != a.dtype:
            raise backend.KernelError(
                f"{what} has dtype {backend.dtype_name(t.dtype)} but A has "
                f"{backend.dtype_name(a.dtype)}; all operands must share one dtype"
            )


def gemm(
    a: torch.Tensor,
    b: torch.Tensor,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    activation: str = "none",
) -> torch.Tensor:
    """`act(a @ b + bias) + residual` with the epilogue fused into the GEMM.

    a: [M, K] or [B, M, K]; b: [K, N] or [B, K, N] (any strides, transposed views
    included); bias: [N]; residual: the output's shape; activation: "none", "gelu"
    (erf) or "gelu_tanh". fp32, fp16 or bf16, one dtype for all operands; the
    result has that dtype.
    """
    _check(a, b, bias, residual, activation)
    backend.check_dtype(a, DTYPES, "matmul operand")
    if not backend.use_triton(a, b):
        return gemm_reference(a, b, bias, residual, activation)
    grad = torch.is_grad_enabled() and (
        a.requires_grad
        or b.requires_grad
        or (bias is not None and bias.requires_grad)
        or (residual is not None and residual.requires_grad)
    )
    return _gemm_op(a, b, bias, residual, activation, grad)[0]


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`a @ b` with `torch.matmul`'s shapes: 1-D operands, and batch dimensions that
    broadcast, flattened into the kernel's one batch dimension (see `gemm`)."""
    backend.check_tensor(a, "a")
    backend.check_tensor(b, "b")
    same_batch = a.dim() < 3 or b.dim() < 3 or a.shape[0] == b.shape[0]
    if min(a.dim(), b.dim()) >= 2 and max(a.dim(), b.dim()) <= 3 and same_batch:
        return gemm(a, b)
    if a.dim() == 0 or b.dim() == 0:
        raise backend.KernelError(
            f"matmul takes operands of one dimension or more, got shapes {tuple(a.shape)} and "
            f"{tuple(b.shape)}"
        )
    a2 = a.unsqueeze(0) if a.dim() == 1 else a
    b2 = b.unsqueeze(-1) if b.dim() == 1 else b
    if a2.shape[-1] != b2.shape[-2]:
        raise backend.KernelError(
            f"inner dimensions differ: {tuple(a.shape)} @ {tuple(b.shape)} "
            f"({a2.shape[-1]} != {b2.shape[-2]})"
        )
    try:
        batch = torch.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    except RuntimeError:
        raise backend.KernelError(
            f"batch dimensions do not broadcast: {tuple(a.shape)} @ {tuple(b.shape)}"
        ) from None

    def flat(x: torch.Tensor) -> torch.Tensor:
        """A 2-D operand stays 2-D (the kernel broadcasts it); any other gets the full batch."""
        if x.dim() == 2:
            return x
        return x.expand(*batch, *x.shape[-2:]).reshape(-1, *x.shape[-2:])

    out = gemm(flat(a2), flat(b2)).reshape(*batch, a2.shape[-2], b2.shape[-1])
    if a.dim() == 1:
        out = out.squeeze(-2)
    return out.squeeze(-1) if b.dim() == 1 else out


def matmul_fp16(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`a @ b` computed in fp16 (operands cast to fp16, fp32 accumulation), returned as fp16."""
    return matmul(a.to(torch.float16), b.to(torch.float16))


_PUBLIC_ACTIVATIONS = {None: "none", "gelu": "gelu", "gelu_tanh": "gelu_tanh"}


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    residual: torch.Tensor | None = None,
    weight_layout: str = "out_in",
) -> torch.Tensor:
    """`act(x @ W + bias) + residual` over the last dimension of `x` ([..., in] -> [..., out]).

    weight_layout "out_in" is nn.Linear's [out, in]; "in_out" is GPT-2's Conv1D
    [in, out]. Neither copies the weight. activation: None, "gelu" (erf) or
    "gelu_tanh"; residual has the output's shape.
    """
    if activation not in _PUBLIC_ACTIVATIONS:
        raise backend.KernelError(f"activation={activation!r}; use None, 'gelu' or 'gelu_tanh'")
    if weight_layout not in WEIGHT_LAYOUTS:
        raise backend.KernelError(
            f"weight_layout={weight_layout!r}; use 'out_in' (nn.Linear) or 'in_out' (Conv1D)"
        )
    _check_tensors(x=x, weight=weight, bias=bias, residual=residual)
    if weight.dim() != 2 or x.dim() == 0:
        raise backend.KernelError(
            f"linear takes x [..., in] and a 2-D weight, got {tuple(x.shape)} and {tuple(weight.shape)}"
        )
    w = weight.t() if weight_layout == "out_in" else weight
    if x.shape[-1] != w.shape[0]:
        raise backend.KernelError(
            f"x has {x.shape[-1]} features but the weight ({weight_layout}, shape "
            f"{tuple(weight.shape)}) takes {w.shape[0]}"
        )
    lead = x.shape[:-1]
    x3 = x.reshape(-1, *x.shape[-2:]) if x.dim() > 3 else x.reshape(1, -1) if x.dim() == 1 else x
    out_shape = (*lead, w.shape[-1])
    res = None
    if residual is not None:
        if tuple(residual.shape) != out_shape:
            raise backend.KernelError(
                f"residual has shape {tuple(residual.shape)}; expected the output's {out_shape}"
            )
        res = residual.reshape(*x3.shape[:-1], w.shape[-1])
    out = gemm(x3, w, bias, res, _PUBLIC_ACTIVATIONS[activation])
    return out.reshape(out_shape)
