"""Flash attention: O(N)-memory forward and backward, and split-K decoding against a KV cache.

Layout is SDPA's: q `[B, Hq, Sq, D]`, k and v `[B, Hkv, Skv, D]`, any strides (a
`[B, S, H, D]` tensor transposed to `[B, H, S, D]` is read in place). Outputs and
gradients take the memory order of the input they mirror, so a transposed
`[B, S, H, D]` query gives an output whose `.transpose(1, 2)` is contiguous.

Masking conventions:
- `causal` aligns the mask to the bottom right: query i sees key j when
  `j <= i + Skv - Sq`, as for a block of queries that ends a cache. With
  Sq == Skv this is the usual lower-triangular mask; with Sq > Skv the first
  Sq - Skv query rows see no key.
- `key_padding_mask` (bool `[B, Skv]`, True = keep) and `seq_lens` (`[B]`: keys
  at or past `seq_lens[b]` are dropped) mask keys only; both may be given.
- A query row that sees no key at all gets a zero output and zero gradients.

Kernels work in base 2: log2(e) is folded into the softmax scale, the saved
log-sum-exp is `log2(sum(exp2(scores)))` (+inf for rows that see no key, so the
backward's `exp2(score - lse)` is 0 there), and only blocks that straddle the
causal diagonal or the end of the keys pay for masks.

The backward is FlashAttention-2's without atomics: one kernel per query block
accumulates dQ over the key blocks and, on the way, computes and stores its rows'
delta = rowsum(dO * O); then one kernel per key block accumulates dK and dV over
every query block of every query head in its group (so grouped-query heads sum
there, in registers). Recomputing QK^T and dO V^T in the dQ kernel costs 2 of 7 matmuls, but it
avoids fp32 atomics on dQ (a full [BLOCK_M, D] read-modify-write per block pair),
a zero-fill and a cast pass, keeps the result deterministic, and lets each kernel
autotune its own tiles.

`decode_attention` handles a few new query tokens against a preallocated cache:
each program takes one key range of one KV head for all query heads of its group
(the cache is read once per group), writes a partial output and log-sum-exp, and
a reduce kernel merges the splits (flash-decoding).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from okto.kernels import backend, environment, tma
from okto.kernels.autotune import autotune, config, launch

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 128
MAX_DECODE_ROWS = 128  # query heads per KV head x new tokens, one tile in the decode kernel
LOG2E = 1.4426950408889634


SMALL_HEAD_DIM = 64  # head dims up to this use the "small" tile lists below


def _tiles(bm: int, bn: int, warps: int, stages: int) -> triton.Config:
    return config(BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages)


def _configs(interpreter: triton.Config, hopper: list[triton.Config]) -> list[triton.Config]:
    """Hopper configurations on a GPU; under the interpreter one small tile that still spans
    several blocks at the tests' odd sizes, so the block loops and diagonal masks run."""
    return [interpreter] if backend.interpreting() else hopper


# ids of the configs meant for large head dims. Kept beside the configs, not as an
# attribute on them: Triton's on-disk autotune cache rebuilds a Config from its
# __dict__, and an extra attribute makes that fail in every later process.
_LARGE_HEAD_DIM: set[int] = set()


def _by_head_dim(small: list[triton.Config], large: list[triton.Config]) -> list[triton.Config]:
    """`small` serves head dims up to SMALL_HEAD_DIM, `large` the rest (`_prune_by_head_dim`
    keeps the matching list). Each list holds tiles that compile for sm_90 with no (or a few
    bytes of) register spills at that head dim, checked with ptxas -v on Triton's PTX."""
    _LARGE_HEAD_DIM.update(id(c) for c in large)
    return small + large


def _prune_by_head_dim(configs, named_args, **kwargs):
    head_dim = kwargs.get("HEAD_DIM", named_args.get("HEAD_DIM"))
    large = head_dim > SMALL_HEAD_DIM
    return [c for c in configs if (id(c) in _LARGE_HEAD_DIM) == large] or configs


_FWD_CONFIGS = _configs(
    _tiles(32, 16, 4, 1),
    _by_head_dim(
        small=[
            _tiles(128, 64, 4, 3),
            _tiles(128, 64, 8, 3),
            _tiles(128, 64, 4, 4),
            _tiles(128, 128, 8, 2),
            _tiles(128, 128, 8, 3),
            _tiles(128, 128, 8, 4),
            _tiles(128, 32, 4, 4),
            _tiles(64, 64, 4, 3),
            _tiles(64, 128, 4, 3),
            _tiles(64, 32, 4, 4),
        ],
        large=[
            _tiles(128, 64, 8, 3),
            _tiles(128, 64, 8, 2),
            _tiles(128, 64, 8, 4),
            _tiles(128, 128, 8, 2),
            _tiles(128, 128, 8, 3),
            _tiles(128, 32, 8, 4),
            _tiles(128, 32, 4, 4),
            _tiles(64, 64, 4, 3),
            _tiles(64, 64, 4, 4),
            _tiles(64, 32, 4, 3),
        ],
    ),
)
# dK/dV: BLOCK_N keys and both fp32 accumulators stay in registers while BLOCK_M query
# rows stream past; at head dim 128 that leaves room for few rows per step.
_DKDV_CONFIGS = _configs(
    _tiles(16, 32, 4, 1),
    _by_head_dim(
        small=[
            _tiles(64, 128, 8, 3),
            _tiles(32, 128, 8, 3),
            _tiles(32, 128, 8, 4),
            _tiles(64, 64, 8, 3),
            _tiles(32, 64, 4, 3),
            _tiles(32, 64, 4, 4),
            _tiles(16, 128, 4, 3),
        ],
        large=[
            _tiles(32, 64, 8, 3),
            _tiles(32, 64, 8, 4),
            _tiles(16, 128, 8, 3),
            _tiles(16, 128, 8, 4),
            _tiles(16, 64, 8, 3),
            _tiles(32, 128, 8, 3),
            _tiles(64, 64, 8, 3),
        ],
    ),
)
# dQ: BLOCK_M query rows stay in registers while BLOCK_N keys stream past.
_DQ_CONFIGS = _configs(
    _tiles(32, 16, 4, 1),
    _by_head_dim(
        small=[
            _tiles(128, 64, 8, 3),
            _tiles(128, 32, 4, 4),
            _tiles(64, 64, 4, 3),
            _tiles(128, 128, 8, 2),
            _tiles(64, 128, 4, 3),
        ],
        large=[
            _tiles(128, 64, 8, 3),
            _tiles(128, 64, 8, 2),
            _tiles(128, 32, 8, 3),
            _tiles(128, 32, 8, 4),
            _tiles(64, 64, 8, 3),
            _tiles(64, 64, 4, 3),
            _tiles(64, 64, 4, 4),
            _tiles(64, 32, 4, 4),
        ],
    ),
)
# Decoding is bandwidth-bound: wide key blocks and deep pipelines (no head-dim split).
_DECODE_CONFIGS = _configs(
    config(BLOCK_N=16, num_warps=4, num_stages=1),
    [
        config(BLOCK_N=64, num_warps=4, num_stages=3),
        config(BLOCK_N=128, num_warps=4, num_stages=3),
        config(BLOCK_N=64, num_warps=4, num_stages=4),
        config(BLOCK_N=128, num_warps=8, num_stages=3),
        config(BLOCK_N=256, num_warps=8, num_stages=2),
        config(BLOCK_N=32, num_warps=2, num_stages=4),
    ],
)
# Decode key ranges start on a multiple of every BLOCK_N tried, as the kernel's loop assumes.
SPLIT_ALIGN = max(c.kwargs["BLOCK_N"] for c in _DECODE_CONFIGS)
# Shape classes (powers of two of Sq, Skv and batch x query heads: tiny grids want other
# tiles than full ones) and everything that changes the compiled kernel.
_FWD_KEY = [
    "SQ_BUCKET", "SKV_BUCKET", "BH_BUCKET", "HEAD_DIM", "CAUSAL", "HAS_KPM", "PRECISION", "USE_TMA",
]  # fmt: skip
_tuned = functools.partial(
    autotune, key=_FWD_KEY, prune_configs_by={"early_config_prune": _prune_by_head_dim}
)


# ---------------------------------------------------------------------------------------------
# Device functions
# ---------------------------------------------------------------------------------------------


@triton.jit
def _load_tile(ptrs, row_ok, d_ok, MASK_ROWS: tl.constexpr, EVEN_D: tl.constexpr):
    """A [rows, BLOCK_D] tile; masks only what can be out of bounds (rows, padded head dims)."""
    if MASK_ROWS and EVEN_D:
        tile = tl.load(ptrs, mask=row_ok[:, None], other=0.0)
    elif MASK_ROWS:
        tile = tl.load(ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    elif EVEN_D:
        tile = tl.load(ptrs)
    else:
        tile = tl.load(ptrs, mask=d_ok[None, :], other=0.0)
    return tile


@triton.jit
def _row_source(
    base,
    rows,
    stride_r,
    stride_d,
    offs_r,
    offs_d,
    BLOCK_R: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    USE_TMA: tl.constexpr,
):
    """Where a kernel reads one head's `[rows, HEAD_DIM]` tiles from: a TMA descriptor,
    or a tile of pointers to the first block (the reader adds `start * stride_r`)."""
    if USE_TMA:
        src = tl.make_tensor_descriptor(
            base, shape=[rows, HEAD_DIM], strides=[stride_r, 1], block_shape=[BLOCK_R, HEAD_DIM]
        )
    else:
        src = base + offs_r[:, None] * stride_r + offs_d[None, :] * stride_d
    return src


@triton.jit
def _scores(
    q,
    k_src,
    v_src,
    kpm_ptr,
    start,
    col_end,
    row_limit,
    stride_kn,
    stride_vn,
    stride_pn,
    d_ok,
    BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_KPM: tl.constexpr,
    EVEN_D: tl.constexpr,
    PRECISION: tl.constexpr,
    USE_TMA: tl.constexpr,
):
    """Load the key/value block at `start`; return q k^T (unscaled, -inf where masked), k, v.

    `k_src`, `v_src` are tensor descriptors when USE_TMA, else tiles of pointers to the
    first block. MASKED blocks drop keys at or past `col_end` and, when CAUSAL, keys
    past each row's `row_limit`; the key-padding mask applies to every block.
    """
    cols = start + tl.arange(0, BLOCK_N)
    col_ok = cols < col_end
    if USE_TMA:  # rows past the keys' end come back as zeros
        k = k_src.load([start, 0])
        v = v_src.load([start, 0])
    else:
        k = _load_tile(k_src + start * stride_kn, col_ok, d_ok, MASKED, EVEN_D)
        v = _load_tile(v_src + start * stride_vn, col_ok, d_ok, MASKED, EVEN_D)
    qk = tl.dot(q, tl.trans(k), input_precision=PRECISION)
    if MASKED:
        keep = col_ok[None, :]
        if CAUSAL:
            keep = keep & (cols[None, :] <= row_limit[:, None])
        qk = tl.where(keep, qk, float("-inf"))
    if HAS_KPM:
        kp = tl.load(kpm_ptr + cols * stride_pn, mask=col_ok, other=0)
        qk = tl.where(kp[None, :] != 0, qk, float("-inf"))
    return qk, k, v


@triton.jit
def _attend(
    acc,
    m_i,
    l_i,
    q,
    k_src,
    v_src,
    kpm_ptr,
    lo,
    hi,
    col_end,
    row_limit,
    stride_kn,
    stride_vn,
    stride_pn,
    d_ok,
    qk_scale,
    BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_KPM: tl.constexpr,
    EVEN_D: tl.constexpr,
    PRECISION: tl.constexpr,
    USE_TMA: tl.constexpr,
):
    """Online softmax of the query tile over the key blocks in [lo, hi), in base 2.

    A row whose running maximum is still -inf (it has seen only masked keys) uses
    0 as its shift, so it accumulates exact zeros instead of NaN.
    """
    for start in range(lo, hi, BLOCK_N):
        start = tl.multiple_of(start, BLOCK_N)
        qk, _, v = _scores(
            q, k_src, v_src, kpm_ptr, start, col_end, row_limit, stride_kn, stride_vn,
            stride_pn, d_ok, BLOCK_N, MASKED, CAUSAL, HAS_KPM, EVEN_D, PRECISION, USE_TMA,
        )  # fmt: skip
        # Scale the row maxima, not the tile, so that the exponent is one FMA per score.
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(qk * qk_scale - shift[:, None])
        alpha = tl.exp2(m_i - shift)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _finish(acc, m_i, l_i):
    """Normalised output and base-2 log-sum-exp (-inf for rows that saw no key)."""
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    return acc / l_safe[:, None], m_i + tl.log2(l_safe)


@triton.jit
def _key_blocks(
    m0, off, kv_len, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr
):
    """For the query rows [m0, m0 + BLOCK_M): keys [0, full_end) need no mask, keys
    [full_end, end) need one (the causal diagonal, the end of the keys)."""
    if CAUSAL:
        full_end = tl.maximum(tl.minimum(m0 + off + 1, kv_len), 0) // BLOCK_N * BLOCK_N
        end = tl.maximum(tl.minimum(m0 + BLOCK_M + off, kv_len), 0)
    else:
        full_end = kv_len // BLOCK_N * BLOCK_N
        end = kv_len
    return full_end, end


@triton.jit
def _kv_len(LENS, b, Skv, HAS_LENS: tl.constexpr):
    kv_len = Skv
    if HAS_LENS:
        kv_len = tl.minimum(tl.load(LENS + b).to(tl.int32), Skv)
    return kv_len


# ---------------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------------


@_tuned(_FWD_CONFIGS)
@triton.jit
def _attn_fwd_kernel(
    Q, K, V, Out, LSE, KPM, LENS,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_pb, stride_pn,
    H, GROUP, Sq, Skv, qk_scale, SQ_BUCKET, SKV_BUCKET, BH_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_KPM: tl.constexpr, HAS_LENS: tl.constexpr,
    PRECISION: tl.constexpr, USE_TMA: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    if CAUSAL:  # the longest rows first, so the short ones fill the tail
        pid_m = tl.num_programs(0) - 1 - pid_m
    h = tl.program_id(1)
    b = tl.program_id(2)
    kv_len = _kv_len(LENS, b, Skv, HAS_LENS)
    b64 = b.to(tl.int64)
    hk64 = (h // GROUP).to(tl.int64)

    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    row_ok = offs_m < Sq

    q_base = Q + b64 * stride_qb + h.to(tl.int64) * stride_qh
    k_base = K + b64 * stride_kb + hk64 * stride_kh
    v_base = V + b64 * stride_vb + hk64 * stride_vh
    q_src = _row_source(
        q_base, Sq, stride_qm, stride_qd, offs_m, offs_d, BLOCK_M, HEAD_DIM, USE_TMA
    )
    if USE_TMA:  # noqa: SIM108 (a constexpr branch: only the taken side is compiled)
        q = q_src.load([m0, 0])
    else:
        q = _load_tile(q_src, row_ok, d_ok, True, EVEN_D)
    k_src = _row_source(
        k_base, Skv, stride_kn, stride_kd, offs_n, offs_d, BLOCK_N, HEAD_DIM, USE_TMA
    )
    v_src = _row_source(
        v_base, Skv, stride_vn, stride_vd, offs_n, offs_d, BLOCK_N, HEAD_DIM, USE_TMA
    )
    kpm_ptr = KPM + b64 * stride_pb

    off = Skv - Sq
    row_limit = offs_m + off
    full_end, end = _key_blocks(m0, off, kv_len, BLOCK_M, BLOCK_N, CAUSAL)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    acc, m_i, l_i = _attend(
        acc, m_i, l_i, q, k_src, v_src, kpm_ptr, 0, full_end, kv_len, row_limit,
        stride_kn, stride_vn, stride_pn, d_ok, qk_scale,
        BLOCK_N, False, CAUSAL, HAS_KPM, EVEN_D, PRECISION, USE_TMA,
    )  # fmt: skip
    acc, m_i, l_i = _attend(
        acc, m_i, l_i, q, k_src, v_src, kpm_ptr, full_end, end, kv_len, row_limit,
        stride_kn, stride_vn, stride_pn, d_ok, qk_scale,
        BLOCK_N, True, CAUSAL, HAS_KPM, EVEN_D, PRECISION, USE_TMA,
    )  # fmt: skip
    out, lse = _finish(acc, m_i, l_i)

    o_ptrs = Out + b64 * stride_ob + h.to(tl.int64) * stride_oh
    o_ptrs += offs_m[:, None] * stride_om + offs_d[None, :] * stride_od
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    lse = tl.where(lse == float("-inf"), float("inf"), lse)  # exp2(s - inf) = 0 in the backward
    lse_ptrs = LSE + ((b64 * H + h) * Sq) + offs_m
    tl.store(lse_ptrs, lse, mask=row_ok)


# ---------------------------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------------------------


@triton.jit
def _dkdv_rows(
    dk,
    dv,
    k,
    v,
    q_src,
    do_src,
    lse_ptr,
    delta_ptr,
    lo,
    hi,
    Sq,
    cols,
    off,
    stride_qm,
    stride_dm,
    d_ok,
    qk_scale,
    BLOCK_M: tl.constexpr,
    MASKED: tl.constexpr,
    EVEN_D: tl.constexpr,
    PRECISION: tl.constexpr,
    USE_TMA: tl.constexpr,
):
    """Accumulate dK, dV (transposed products, keys as rows) over query blocks [lo, hi).

    `q_src`, `do_src` are tensor descriptors when USE_TMA, else pointer tiles. Rows
    past Sq load lse = +inf, so their probabilities are 0; MASKED blocks straddle the
    causal diagonal.
    """
    offs_m = tl.arange(0, BLOCK_M)
    for start in range(lo, hi, BLOCK_M):
        start = tl.multiple_of(start, BLOCK_M)
        rows = start + offs_m
        row_ok = rows < Sq
        if USE_TMA:
            q = q_src.load([start, 0])
            do = do_src.load([start, 0])
        else:
            q = _load_tile(q_src + start * stride_qm, row_ok, d_ok, True, EVEN_D)
            do = _load_tile(do_src + start * stride_dm, row_ok, d_ok, True, EVEN_D)
        lse = tl.load(lse_ptr + rows, mask=row_ok, other=float("inf"))
        delta = tl.load(delta_ptr + rows, mask=row_ok, other=0.0)
        qk_t = tl.dot(k, tl.trans(q), input_precision=PRECISION)
        p_t = tl.exp2(qk_t * qk_scale - lse[None, :])
        if MASKED:
            p_t = tl.where(cols[:, None] <= rows[None, :] + off, p_t, 0.0)
        dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=PRECISION)
    return dk, dv


@_tuned(_DKDV_CONFIGS)
@triton.jit
def _attn_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, KPM, LENS,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_db, stride_dh, stride_dm, stride_dd,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    stride_pb, stride_pn,
    H, GROUP, Sq, Skv, qk_scale, scale, SQ_BUCKET, SKV_BUCKET, BH_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_KPM: tl.constexpr, HAS_LENS: tl.constexpr,
    PRECISION: tl.constexpr, USE_TMA: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """dK, dV for BLOCK_N keys of one KV head, summed over the query heads of its group."""
    hk = tl.program_id(1)
    b = tl.program_id(2)
    kv_len = _kv_len(LENS, b, Skv, HAS_LENS)
    b64 = b.to(tl.int64)
    hk64 = hk.to(tl.int64)

    n0 = tl.program_id(0) * BLOCK_N
    cols = n0 + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    col_ok = cols < kv_len
    k_ptrs = K + b64 * stride_kb + hk64 * stride_kh
    k = _load_tile(k_ptrs + cols[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                   col_ok, d_ok, True, EVEN_D)  # fmt: skip
    v_ptrs = V + b64 * stride_vb + hk64 * stride_vh
    v = _load_tile(v_ptrs + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                   col_ok, d_ok, True, EVEN_D)  # fmt: skip

    # Query blocks [lo, mid) straddle the causal diagonal; [mid, m_end) see the whole key block.
    off = Skv - Sq
    m_end = tl.where(n0 < kv_len, Sq, 0)
    if CAUSAL:
        lo = tl.maximum(n0 - off, 0) // BLOCK_M * BLOCK_M
        mid = tl.cdiv(tl.maximum(n0 + BLOCK_N - 1 - off, 0), BLOCK_M) * BLOCK_M
    else:
        lo = 0
        mid = 0
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for g in range(GROUP):
        h = hk * GROUP + g
        h64 = h.to(tl.int64)
        q_base = Q + b64 * stride_qb + h64 * stride_qh
        do_base = DO + b64 * stride_db + h64 * stride_dh
        q_src = _row_source(
            q_base, Sq, stride_qm, stride_qd, offs_m, offs_d, BLOCK_M, HEAD_DIM, USE_TMA
        )
        do_src = _row_source(
            do_base, Sq, stride_dm, stride_dd, offs_m, offs_d, BLOCK_M, HEAD_DIM, USE_TMA
        )
        row0 = (b64 * H + h64) * Sq
        dk, dv = _dkdv_rows(
            dk, dv, k, v, q_src, do_src, LSE + row0, DELTA + row0,
            lo, tl.minimum(mid, m_end), Sq, cols, off, stride_qm, stride_dm, d_ok, qk_scale,
            BLOCK_M, True, EVEN_D, PRECISION, USE_TMA,
        )  # fmt: skip
        dk, dv = _dkdv_rows(
            dk, dv, k, v, q_src, do_src, LSE + row0, DELTA + row0,
            mid, m_end, Sq, cols, off, stride_qm, stride_dm, d_ok, qk_scale,
            BLOCK_M, False, EVEN_D, PRECISION, USE_TMA,
        )  # fmt: skip

    # Dropped keys (padding, past seq_lens) get zero gradients; their rows above used
    # probabilities that the forward never had, and are discarded here.
    keep = col_ok
    if HAS_KPM:
        keep = keep & (tl.load(KPM + b64 * stride_pb + cols * stride_pn, mask=col_ok, other=0) != 0)
    dk = tl.where(keep[:, None], dk * scale, 0.0)
    dv = tl.where(keep[:, None], dv, 0.0)
    store_ok = (cols < Skv)[:, None] & d_ok[None, :]
    dk_ptrs = DK + b64 * stride_dkb + hk64 * stride_dkh
    dk_ptrs += cols[:, None] * stride_dkn + offs_d[None, :] * stride_dkd
    tl.store(dk_ptrs, dk.to(DK.dtype.element_ty), mask=store_ok)
    dv_ptrs = DV + b64 * stride_dvb + hk64 * stride_dvh
    dv_ptrs += cols[:, None] * stride_dvn + offs_d[None, :] * stride_dvd
    tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=store_ok)


@triton.jit
def _dq_cols(
    dq,
    q,
    do,
    lse,
    delta,
    k_src,
    v_src,
    kpm_ptr,
    lo,
    hi,
    col_end,
    row_limit,
    stride_kn,
    stride_vn,
    stride_pn,
    d_ok,
    qk_scale,
    BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_KPM: tl.constexpr,
    EVEN_D: tl.constexpr,
    PRECISION: tl.constexpr,
    USE_TMA: tl.constexpr,
):
    """Accumulate dQ (unscaled) over the key blocks in [lo, hi)."""
    for start in range(lo, hi, BLOCK_N):
        start = tl.multiple_of(start, BLOCK_N)
        qk, k, v = _scores(
            q, k_src, v_src, kpm_ptr, start, col_end, row_limit, stride_kn, stride_vn,
            stride_pn, d_ok, BLOCK_N, MASKED, CAUSAL, HAS_KPM, EVEN_D, PRECISION, USE_TMA,
        )  # fmt: skip
        p = tl.exp2(qk * qk_scale - lse[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PRECISION)
    return dq


@_tuned(_DQ_CONFIGS)
@triton.jit
def _attn_bwd_dq_kernel(
    Q, K, V, DO, Out, LSE, DELTA, DQ, KPM, LENS,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_db, stride_dh, stride_dm, stride_dd,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_dqb, stride_dqh, stride_dqm, stride_dqd,
    stride_pb, stride_pn,
    H, GROUP, Sq, Skv, qk_scale, scale, SQ_BUCKET, SKV_BUCKET, BH_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_KPM: tl.constexpr, HAS_LENS: tl.constexpr,
    PRECISION: tl.constexpr, USE_TMA: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """dQ for BLOCK_M query rows of one query head. It also computes and stores those rows'
    delta = rowsum(dO * O), the softmax-backward term the dK/dV kernel launched after it
    reads (no pass of its own over O and dO)."""
    pid_m = tl.program_id(0)
    if CAUSAL:
        pid_m = tl.num_programs(0) - 1 - pid_m
    h = tl.program_id(1)
    b = tl.program_id(2)
    kv_len = _kv_len(LENS, b, Skv, HAS_LENS)
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    hk64 = (h // GROUP).to(tl.int64)

    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    row_ok = offs_m < Sq
    q_ptrs = Q + b64 * stride_qb + h64 * stride_qh
    q = _load_tile(q_ptrs + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                   row_ok, d_ok, True, EVEN_D)  # fmt: skip
    do_ptrs = DO + b64 * stride_db + h64 * stride_dh
    do = _load_tile(do_ptrs + offs_m[:, None] * stride_dm + offs_d[None, :] * stride_dd,
                    row_ok, d_ok, True, EVEN_D)  # fmt: skip
    o_ptrs = Out + b64 * stride_ob + h64 * stride_oh
    o = _load_tile(o_ptrs + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od,
                   row_ok, d_ok, True, EVEN_D)  # fmt: skip
    row0 = (b64 * H + h64) * Sq
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + row0 + offs_m, delta, mask=row_ok)
    lse = tl.load(LSE + row0 + offs_m, mask=row_ok, other=float("inf"))
    k_base = K + b64 * stride_kb + hk64 * stride_kh
    v_base = V + b64 * stride_vb + hk64 * stride_vh
    k_src = _row_source(
        k_base, Skv, stride_kn, stride_kd, offs_n, offs_d, BLOCK_N, HEAD_DIM, USE_TMA
    )
    v_src = _row_source(
        v_base, Skv, stride_vn, stride_vd, offs_n, offs_d, BLOCK_N, HEAD_DIM, USE_TMA
    )
    kpm_ptr = KPM + b64 * stride_pb

    off = Skv - Sq
    row_limit = offs_m + off
    full_end, end = _key_blocks(m0, off, kv_len, BLOCK_M, BLOCK_N, CAUSAL)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    dq = _dq_cols(
        dq, q, do, lse, delta, k_src, v_src, kpm_ptr, 0, full_end, kv_len, row_limit,
        stride_kn, stride_vn, stride_pn, d_ok, qk_scale,
        BLOCK_N, False, CAUSAL, HAS_KPM, EVEN_D, PRECISION, USE_TMA,
    )  # fmt: skip
    dq = _dq_cols(
        dq, q, do, lse, delta, k_src, v_src, kpm_ptr, full_end, end, kv_len, row_limit,
        stride_kn, stride_vn, stride_pn, d_ok, qk_scale,
        BLOCK_N, True, CAUSAL, HAS_KPM, EVEN_D, PRECISION, USE_TMA,
    )  # fmt: skip
    dq_ptrs = DQ + b64 * stride_dqb + h64 * stride_dqh
    dq_ptrs += offs_m[:, None] * stride_dqm + offs_d[None, :] * stride_dqd
    tl.store(dq_ptrs, (dq * scale).to(DQ.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


# ---------------------------------------------------------------------------------------------
# Decode
# ---------------------------------------------------------------------------------------------


@autotune(_DECODE_CONFIGS, key=["SPLIT_BUCKET", "ROWS", "HEAD_DIM", "SPLIT", "PRECISION"])
@triton.jit
def _decode_kernel(
    Q, K, V, LENS, Out, O_PART, LSE_PART,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    Hkv, GROUP, SQ, S_cache, split_len, qk_scale, SPLIT_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, ROWS: tl.constexpr,
    SPLIT: tl.constexpr, PRECISION: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """One key range of one KV head against every (query head of the group, new token) row.

    Row r is query head `hk * GROUP + r // SQ`, new token `t = r % SQ`, at cache
    position `len - SQ + t`: it sees keys up to that position.
    """
    split = tl.program_id(0)
    hk = tl.program_id(1)
    b = tl.program_id(2)
    kv_len = tl.minimum(tl.load(LENS + b).to(tl.int32), S_cache)
    b64 = b.to(tl.int64)
    hk64 = hk.to(tl.int64)

    r = tl.arange(0, ROWS)
    g = r // SQ
    t = r - g * SQ
    row_ok = r < GROUP * SQ
    h64 = (hk * GROUP + g).to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    q_ptrs = Q + b64 * stride_qb + h64[:, None] * stride_qh
    q = _load_tile(q_ptrs + t[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                   row_ok, d_ok, True, EVEN_D)  # fmt: skip
    k_ptrs = K + b64 * stride_kb + hk64 * stride_kh
    k_ptrs += offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd
    v_ptrs = V + b64 * stride_vb + hk64 * stride_vh
    v_ptrs += offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd

    start = split * split_len
    end = tl.minimum(start + split_len, kv_len)
    m_i = tl.full([ROWS], float("-inf"), tl.float32)
    l_i = tl.zeros([ROWS], tl.float32)
    acc = tl.zeros([ROWS, BLOCK_D], tl.float32)
    acc, m_i, l_i = _attend(
        acc, m_i, l_i, q, k_ptrs, v_ptrs, K, start, end, end, kv_len - SQ + t,
        stride_kn, stride_vn, 0, d_ok, qk_scale,
        BLOCK_N, True, True, False, EVEN_D, PRECISION, False,
    )  # fmt: skip
    out, lse = _finish(acc, m_i, l_i)
    if SPLIT:
        # Partials are [B, Hq, SQ, splits, D] and [B, Hq, SQ, splits], fp32.
        part = ((b64 * Hkv * GROUP + h64) * SQ + t) * tl.num_programs(0) + split
        tl.store(LSE_PART + part, lse, mask=row_ok)
        o_ptrs = O_PART + part[:, None] * HEAD_DIM + offs_d[None, :]
        tl.store(o_ptrs, out, mask=row_ok[:, None] & d_ok[None, :])
    else:
        o_ptrs = Out + b64 * stride_ob + h64[:, None] * stride_oh
        o_ptrs += t[:, None] * stride_om + offs_d[None, :] * stride_od
        tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def _decode_combine_kernel(
    O_PART, LSE_PART, Out,
    stride_ob, stride_oh, stride_om, stride_od,
    H, SQ, SPLITS,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    """Merge the splits of one (batch, head, token) row by their log-sum-exp weights."""
    row = tl.program_id(0).to(tl.int64)
    t = row % SQ
    h = (row // SQ) % H
    b = row // (SQ * H)
    s = tl.arange(0, BLOCK_S)
    s_ok = s < SPLITS
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    lse = tl.load(LSE_PART + row * SPLITS + s, mask=s_ok, other=float("-inf"))
    top = tl.max(lse, 0)
    w = tl.exp2(lse - tl.where(top == float("-inf"), 0.0, top))
    total = tl.sum(w, 0)
    parts = tl.load(
        O_PART + (row * SPLITS + s)[:, None] * HEAD_DIM + offs_d[None, :],
        mask=s_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    out = tl.sum(parts * w[:, None], 0) / tl.where(total == 0.0, 1.0, total)
    o_ptrs = Out + b * stride_ob + h * stride_oh + t * stride_om + offs_d * stride_od
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=d_ok)


# ---------------------------------------------------------------------------------------------
# Host side: layouts, launches, custom ops
# ---------------------------------------------------------------------------------------------


def _like(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A poisoned `[B, H, S, D]` buffer in t's memory order: `[B, S, H, D]` underneath when t
    has heads inside the sequence (a transposed projection), else contiguous."""
    b, h, s, d = t.shape
    dtype = dtype or t.dtype
    if t.stride(1) < t.stride(2):
        return backend.empty(b, s, h, d, dtype=dtype, device=t.device).transpose(1, 2)
    return backend.empty(b, h, s, d, dtype=dtype, device=t.device)


def _fake_like(t: torch.Tensor) -> torch.Tensor:
    b, h, s, d = t.shape
    if t.stride(1) < t.stride(2):
        return t.new_empty(b, s, h, d).transpose(1, 2)
    return t.new_empty(b, h, s, d)


def _bucket(n: int) -> int:
    """Autotuning shape class: the next power of two, so new lengths reuse a tuned config."""
    return backend.next_power_of_2(max(n, 16))


def _head_meta(q: torch.Tensor) -> dict:
    d = q.shape[-1]
    block_d = max(16, backend.next_power_of_2(d))
    # fp32 inputs get exact fp32 products, not TF32.
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    return {"HEAD_DIM": d, "BLOCK_D": block_d, "EVEN_D": d == block_d, "PRECISION": precision}


def _tma_reads(*tensors: torch.Tensor) -> bool:
    """Whether the kernels read these `[B, H, S, D]` tensors through TMA descriptors.

    OKTO_ATTENTION_TMA: `auto` (Hopper GPUs), `1` (also Triton's interpreter, for the
    tests), `0` (never: pointer loads, for comparison).
    """
    setting = environment.setting("OKTO_ATTENTION_TMA")
    q = tensors[0]
    if setting == "0" or q.dtype not in (torch.float16, torch.bfloat16):
        return False
    if not tma.usable(q, forced=setting == "1"):
        return False
    d = q.shape[-1]
    if d < 16 or d & (d - 1):  # the tile spans the whole head: a power of two
        return False
    for t in tensors:  # noqa: SIM110 (a loop, not all(generator): every call runs this)
        if not t.shape[2] or not tma.rows_aligned(t):
            return False
    return True


def _mask_args(q, key_padding_mask, seq_lens):
    kpm = q if key_padding_mask is None else key_padding_mask.view(torch.uint8)
    strides = (0, 0) if key_padding_mask is None else kpm.stride()
    lens = q if seq_lens is None else seq_lens.contiguous()  # the kernels index it at stride 1
    flags = {"HAS_KPM": key_padding_mask is not None, "HAS_LENS": seq_lens is not None}
    return kpm, lens, strides, flags


def forward(q, k, v, key_padding_mask, seq_lens, causal: bool, scale: float):
    """(o, lse) for `[B, H, S, D]` views of any strides; o takes q's memory order."""
    b, h, sq, _ = q.shape
    hkv, skv = k.shape[1], k.shape[2]
    o = _like(q)
    lse = backend.empty(b, h, sq, dtype=torch.float32, device=q.device)
    if o.numel():
        kpm, lens, kpm_strides, flags = _mask_args(q, key_padding_mask, seq_lens)
        head = _head_meta(q)
        # Measured on an H100 (bf16, causal): TMA loads made the forward 3-4% faster at head
        # dim 128 and 2-18% slower at 64, where the programs are too short to repay
        # building their descriptors. The backward gains at both (8-9%).
        use_tma = q.shape[-1] > SMALL_HEAD_DIM and _tma_reads(q, k, v)
        buckets = (_bucket(sq), _bucket(skv), _bucket(b * h))
        key = (*buckets, causal, *flags.values(), *head.values(), use_tma, q.dtype, kpm.dtype,
               lens.dtype)  # fmt: skip
        if use_tma:
            tma.set_workspace()
        launch(
            _attn_fwd_kernel, lambda meta: (backend.cdiv(sq, meta["BLOCK_M"]), h, b), key,
            q, k, v, o, lse, kpm, lens,
            *q.stride(), *k.stride(), *v.stride(), *o.stride(), *kpm_strides,
            h, h // hkv, sq, skv, scale * LOG2E, *buckets,
            CAUSAL=causal, **flags, **head, USE_TMA=use_tma,
        )  # fmt: skip
    return o, lse


def backward_into(dq, dk, dv, do, q, k, v, o, lse, key_padding_mask, seq_lens, causal, scale):
    """Write the gradients into `dq`, `dk`, `dv` (`[B, H, S, D]` views of any strides)."""
    b, h, sq, _ = q.shape
    hkv, skv = k.shape[1], k.shape[2]
    meta = _head_meta(q)
    kpm, lens, kpm_strides, flags = _mask_args(q, key_padding_mask, seq_lens)
    use_tma = _tma_reads(q, k, v, do)
    if use_tma:
        tma.set_workspace()
    common = dict(CAUSAL=causal, **flags, **meta, USE_TMA=use_tma)
    buckets = (_bucket(sq), _bucket(skv), _bucket(b * h))
    scalars = (h, h // hkv, sq, skv, scale * LOG2E, scale, *buckets)
    if dq.numel():
        delta = backend.empty(b, h, sq, dtype=torch.float32, device=q.device)
        launch(  # writes delta for the dK/dV kernel
            _attn_bwd_dq_kernel, lambda m: (backend.cdiv(sq, m["BLOCK_M"]), h, b), buckets,
            q, k, v, do, o, lse, delta, dq, kpm, lens,
            *q.stride(), *k.stride(), *v.stride(), *do.stride(), *o.stride(), *dq.stride(),
            *kpm_strides, *scalars, **common,
        )  # fmt: skip
    else:
        delta = lse  # no query rows: the dK/dV kernel reads nothing from it
    if dk.numel():
        launch(
            _attn_bwd_dkdv_kernel, lambda m: (backend.cdiv(skv, m["BLOCK_N"]), hkv, b), buckets,
            q, k, v, do, lse, delta, dk, dv, kpm, lens,
            *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dk.stride(), *dv.stride(),
            *kpm_strides, *scalars, **common,
        )  # fmt: skip


@backend.eager_fast_path
@torch.library.custom_op("okto::attention", mutates_args=())
def _attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    seq_lens: torch.Tensor | None,
    causal: bool,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    return forward(q, k, v, key_padding_mask, seq_lens, causal, scale)


@_attention_op.register_fake
def _(q, k, v, key_padding_mask, seq_lens, causal, scale):
    return _fake_like(q), q.new_empty(q.shape[:3], dtype=torch.float32)


@backend.eager_fast_path
@torch.library.custom_op("okto::attention_backward", mutates_args=())
def _attention_backward_op(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    seq_lens: torch.Tensor | None,
    causal: bool,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dq, dk, dv = _like(q), _like(k), _like(v)
    backward_into(dq, dk, dv, do, q, k, v, o, lse, key_padding_mask, seq_lens, causal, scale)
    return dq, dk, dv


@_attention_backward_op.register_fake
def _(do, q, k, v, o, lse, key_padding_mask, seq_lens, causal, scale):
    return _fake_like(q), _fake_like(k), _fake_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, key_padding_mask, seq_lens, causal, scale = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse, key_padding_mask, seq_lens)
    ctx.causal, ctx.scale = causal, scale
    ctx.mark_non_differentiable(lse)
    ctx.set_materialize_grads(False)


def _backward(ctx, do, _dlse):
    q, k, v, o, lse, key_padding_mask, seq_lens = ctx.saved_tensors
    dq, dk, dv = _attention_backward_op(
        do, q, k, v, o, lse, key_padding_mask, seq_lens, ctx.causal, ctx.scale
    )
    return dq, dk, dv, None, None, None, None


_attention_op.register_autograd(_backward, setup_context=_setup_context)


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def decode_splits(batch: int, kv_heads: int, cache_len: int, device: torch.device) -> int:
    """How many key ranges to split the cache into: enough programs for about four per SM,
    with at least 256 keys per range so the partials stay cheap to merge."""
    if device.type != "cuda":
        return 1
    index = torch.cuda.current_device() if device.index is None else device.index
    wanted = backend.cdiv(4 * _sm_count(index), max(batch * kv_heads, 1))
    return max(1, min(wanted, backend.cdiv(cache_len, 256)))


@backend.eager_fast_path
@torch.library.custom_op("okto::decode_attention", mutates_args=())
def _decode_op(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_lens: torch.Tensor,
    scale: float,
    num_splits: int,
) -> torch.Tensor:
    b, h, sq, d = q.shape
    hkv, s_cache = k_cache.shape[1], k_cache.shape[2]
    group = h // hkv
    o = _like(q)
    if not o.numel():
        return o
    split_len = SPLIT_ALIGN * backend.cdiv(backend.cdiv(max(s_cache, 1), num_splits), SPLIT_ALIGN)
    splits = backend.cdiv(max(s_cache, 1), split_len)
    meta = _head_meta(q)
    if splits > 1:
        o_part = backend.empty(b, h, sq, splits, d, dtype=torch.float32, device=q.device)
        lse_part = backend.empty(b, h, sq, splits, dtype=torch.float32, device=q.device)
    else:
        o_part = lse_part = o  # the single-split kernel writes the output directly
    split_bucket = _bucket(split_len)
    launch(
        _decode_kernel, (splits, hkv, b), (split_bucket,),
        q, k_cache, v_cache, cache_lens.contiguous(), o, o_part, lse_part,
        *q.stride(), *k_cache.stride(), *v_cache.stride(), *o.stride(),
        hkv, group, sq, s_cache, split_len, scale * LOG2E, split_bucket,
        ROWS=max(16, backend.next_power_of_2(group * sq)), SPLIT=splits > 1, **meta,
    )  # fmt: skip
    if splits > 1:
        launch(
            _decode_combine_kernel, (b * h * sq,), (),
            o_part, lse_part, o, *o.stride(), h, sq, splits,
            HEAD_DIM=d, BLOCK_D=meta["BLOCK_D"], BLOCK_S=max(2, backend.next_power_of_2(splits)),
        )  # fmt: skip
    return o


@_decode_op.register_fake
def _(q, k_cache, v_cache, cache_lens, scale, num_splits):
    return _fake_like(q)


# ---------------------------------------------------------------------------------------------
# References and public functions
# ---------------------------------------------------------------------------------------------


def _masked_attention(q, k, v, keep, scale):
    """Materialised softmax attention; `keep` (bool, broadcast to [B, Hq, Sq, Skv]) marks the
    visible keys, and rows that see none give zeros. float64 stays float64, the rest runs
    in float32."""
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    group = q.shape[1] // k.shape[1]
    k = k.to(work).repeat_interleave(group, dim=1)
    v = v.to(work).repeat_interleave(group, dim=1)
    scores = (q.to(work) @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~keep, float("-inf"))
    # amax() refuses an empty dimension: with no keys at all every row sees none.
    top = scores.amax(-1, keepdim=True).detach() if k.shape[2] else scores.new_zeros(())
    p = torch.exp(scores - torch.where(torch.isinf(top), 0.0, top))
    total = p.sum(-1, keepdim=True)
    return ((p / torch.where(total == 0, 1.0, total)) @ v).to(q.dtype)


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    scale: float | None = None,
    key_padding_mask: torch.Tensor | None = None,
    seq_lens: torch.Tensor | None = None,
) -> torch.Tensor:
    """The same attention with the score matrix materialised (O(N^2) memory)."""
    sq, skv = q.shape[2], k.shape[2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    rows = torch.arange(sq, device=q.device)[:, None]
    cols = torch.arange(skv, device=q.device)
    keep = torch.ones(1, 1, sq, skv, dtype=torch.bool, device=q.device)
    if causal:
        keep = keep & (cols <= rows + (skv - sq))
    if key_padding_mask is not None:
        keep = keep & key_padding_mask[:, None, None, :]
    if seq_lens is not None:
        keep = keep & (cols < seq_lens[:, None, None, None])
    return _masked_attention(q, k, v, keep, scale)


def decode_attention_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_lens: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """Decoding with the score matrix materialised: new token t of batch b sits at cache
    position `cache_lens[b] - Sq + t` and sees the keys up to it."""
    squeeze = q.dim() == 3
    q = q.unsqueeze(2) if squeeze else q
    sq, s_cache = q.shape[2], k_cache.shape[2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    pos = cache_lens.to(q.device)[:, None] - sq + torch.arange(sq, device=q.device)  # [B, Sq]
    keep = torch.arange(s_cache, device=q.device) <= pos[:, None, :, None]
    out = _masked_attention(q, k_cache, v_cache, keep, scale)
    return out.squeeze(2) if squeeze else out


def _check_qkv(q, k, v, what="k and v"):
    for t, name in ((q, "q"), (k, "k"), (v, "v")):
        backend.check_tensor(t, name)
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise backend.KernelError(
            f"attention takes 4-D [B, H, S, D] tensors; got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if k.shape != v.shape:
        raise backend.KernelError(f"{what} differ in shape: {tuple(k.shape)} vs {tuple(v.shape)}")
    b, h, _, d = q.shape
    if k.shape[0] != b or k.shape[3] != d:
        raise backend.KernelError(
            f"q {tuple(q.shape)} and {what} {tuple(k.shape)} disagree in batch or head dim"
        )
    if k.shape[1] == 0 or h % k.shape[1]:
        raise backend.KernelError(
            f"query heads ({h}) must be a multiple of key/value heads ({k.shape[1]})"
        )
    if not 1 <= d <= MAX_HEAD_DIM:
        raise backend.KernelError(f"head dim {d} is not supported; use 1..{MAX_HEAD_DIM}")


def softmax_scale(scale: float | None, head_dim: int) -> float:
    """`scale` as a float, 1/sqrt(head_dim) when None. Positive and finite only: the kernels
    set masked scores (causal, padding, a tile's edge) to -inf before scaling them, so a
    scale of 0 or below made NaN where the reference returned numbers."""
    value = head_dim**-0.5 if scale is None else backend.number(scale, "scale")
    if not 0 < value < float("inf"):  # also refuses NaN
        raise backend.KernelError(f"scale={scale!r}; use a positive finite number (or None)")
    return value


def _check_inputs(floats: dict[str, torch.Tensor], *others: torch.Tensor) -> None:
    backend.check_same_device(*floats.values(), *others)
    for name, t in floats.items():
        backend.check_dtype(t, DTYPES, name)
    if len({t.dtype for t in floats.values()}) > 1:
        kinds = ", ".join(f"{n} {backend.dtype_name(t.dtype)}" for n, t in floats.items())
        raise backend.KernelError(f"attention inputs must share one dtype; got {kinds}")


def _check_lengths(lens: torch.Tensor, batch: int, what: str) -> None:
    if lens.shape != (batch,) or lens.dtype not in (torch.int32, torch.int64):
        raise backend.KernelError(
            f"{what} must be an int32/int64 tensor of shape ({batch},); "
            f"got {backend.dtype_name(lens.dtype)} {tuple(lens.shape)}"
        )


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    scale: float | None = None,
    key_padding_mask: torch.Tensor | None = None,
    seq_lens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax attention of q `[B, Hq, Sq, D]` over k, v `[B, Hkv, Skv, D]` (Hq a multiple
    of Hkv), in O(Sq + Skv) memory; differentiable in q, k and v.

    `causal` is aligned to the bottom right (query i sees keys j <= i + Skv - Sq);
    `key_padding_mask` (bool `[B, Skv]`, True = keep) and `seq_lens` (`[B]`) drop keys;
    `scale` defaults to 1/sqrt(D). fp16, bf16 and fp32; D up to 128.
    """
    _check_qkv(q, k, v)
    b, skv = q.shape[0], k.shape[2]
    if key_padding_mask is not None and (
        key_padding_mask.dtype != torch.bool or key_padding_mask.shape != (b, skv)
    ):
        raise backend.KernelError(
            f"key_padding_mask must be bool of shape ({b}, {skv}); got "
            f"{backend.dtype_name(key_padding_mask.dtype)} {tuple(key_padding_mask.shape)}"
        )
    if seq_lens is not None:
        _check_lengths(seq_lens, b, "seq_lens")
    scale = softmax_scale(scale, q.shape[-1])
    extras = [t for t in (key_padding_mask, seq_lens) if t is not None]
    _check_inputs({"q": q, "k": k, "v": v}, *extras)
    if not backend.use_triton(q, k, v):
        return attention_reference(q, k, v, causal, scale, key_padding_mask, seq_lens)
    return _attention_op(q, k, v, key_padding_mask, seq_lens, bool(causal), scale)[0]


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_lens: torch.Tensor,
    scale: float | None = None,
    num_splits: int | None = None,
) -> torch.Tensor:
    """Attention of a few new tokens against a preallocated KV cache (forward only).

    q is `[B, Hq, Sq, D]` (or `[B, Hq, D]` for one token); the caches are
    `[B, Hkv, S_cache, D]` with the new tokens' keys and values already written;
    `cache_lens[b]` counts the valid cache entries, new tokens included, so new
    token t sits at position `cache_lens[b] - Sq + t` and sees the keys up to it.
    `num_splits` overrides how many key ranges the cache is split into.
    """
    squeeze = q.dim() == 3
    q = q.unsqueeze(2) if squeeze else q
    _check_qkv(q, k_cache, v_cache, what="k_cache and v_cache")
    _check_lengths(cache_lens, q.shape[0], "cache_lens")
    b, h, sq, _ = q.shape
    hkv, s_cache = k_cache.shape[1], k_cache.shape[2]
    if (h // hkv) * sq > MAX_DECODE_ROWS:
        raise backend.KernelError(
            f"decode_attention takes at most {MAX_DECODE_ROWS} query rows per KV head "
            f"(query heads per KV head x new tokens = {(h // hkv) * sq}); use attention()"
        )
    num_splits = None if num_splits is None else backend.integer(num_splits, "num_splits")
    if num_splits is not None and num_splits < 1:
        raise backend.KernelError(f"num_splits must be at least 1; got {num_splits}")
    scale = softmax_scale(scale, q.shape[-1])
    _check_inputs({"q": q, "k_cache": k_cache, "v_cache": v_cache}, cache_lens)
    if not backend.use_triton(q, k_cache, v_cache):
        out = decode_attention_reference(q, k_cache, v_cache, cache_lens, scale)
    else:
        splits = num_splits or decode_splits(b, hkv, s_cache, q.device)
        out = _decode_op(q, k_cache, v_cache, cache_lens, scale, splits)
    return out.squeeze(2) if squeeze else out
