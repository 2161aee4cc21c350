"""Triton kernels and launchers shared by LayerNorm (`layer_norm.py`) and RMSNorm (`rms_norm.py`).

The two norms differ only in whether the row mean is subtracted and a bias added,
so one forward and one backward kernel serve both (IS_RMS).

- Forward: a program normalises BLOCK_M rows held in registers, so x (and the
  residual) is read once and y (and x + residual) written once; the fp32 mean
  and 1/std are saved for the backward. Rows wider than FWD_MAX_BLOCK stream
  through in chunks twice (statistics, then output).
- Backward: persistent programs, a few per SM, each walk rows pid, pid + G, ...,
  write dx and keep dweight/dbias partial sums in fp32 registers; the G partial
  rows are summed once at the end by `reduce.sum_rows` (the Apex/Liger scheme),
  so the weight gradients cost no atomics and no extra pass over the
  activations: two launches in all. Rows wider than BWD_MAX_BLOCK stream in
  chunks and keep their partial sums in global memory instead.

With a residual, the normalised input is `x + residual` in PyTorch's promoted
dtype, rounded exactly as `x + residual` rounds; it is stored for the next
residual branch and saved in place of x for the backward. The two may differ in
width (a bf16 branch output onto an fp32 residual stream, autocast's case): the
sum is then fp32, y may be written in the branch's dtype for the next GEMM, and
the backward writes the sum's gradient once in fp32 and once rounded to the
narrower dtype, so neither side needs a cast pass of its own.

With a residual the norm may also take `x_bias`, the bias of the layer that
produced x, deferred to here (that layer then runs without it): the sum is
`x + x_bias + residual` in fp32, rounded once, and the bias's gradient is one
more column sum of the sum's gradient, kept beside the weight's and bias's
partial sums, so the layer's own bias-gradient pass over its output disappears.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from okto.kernels import backend
from okto.kernels.autotune import autotune, config, launch
from okto.kernels.ops.reduce import sum_rows

DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Widest row the forward keeps in registers (elements); wider rows are chunked.
FWD_MAX_BLOCK = 16384
# The backward also holds dweight/dbias accumulators, so its rows stay narrower.
BWD_MAX_BLOCK = 8192
# Chunk width for rows wider than those limits.
CHUNK_BLOCK = 4096
# Persistent backward programs per SM: enough loads in flight to saturate HBM.
BWD_PROGRAMS_PER_SM = 4


# Rows per program x warps; the first (several rows) is what the interpreter runs.
_CONFIGS = [config(BLOCK_M=4, num_warps=4, num_stages=1)] + [
    config(BLOCK_M=m, num_warps=w, num_stages=1)
    for m in (1, 2, 4, 8, 16)
    for w in (4, 8, 16, 32)
    if (m, w) != (4, 4)
]
# Elements per thread: 8 make one 16-byte load of fp16/bf16; above 16 the backward
# spills on sm_90 (measured with ptxas: 16 per thread is ~128 registers there).
_MIN_PER_THREAD, _MAX_PER_THREAD = 8, 16


def _prune(configs, named_args, **kwargs):
    """Keep configs whose tile gives each thread 8 to 16 elements.

    The row count is deliberately ignored: the tuning key is the row width, so a
    first call with a handful of rows (decoding) must not narrow the choice that
    later calls with thousands of rows (training) inherit.
    """
    block_n = kwargs["BLOCK_N"]
    keep = [
        c
        for c in configs
        if _MIN_PER_THREAD <= c.kwargs["BLOCK_M"] * block_n / (32 * c.num_warps) <= _MAX_PER_THREAD
    ]
    return keep or [min(configs, key=lambda c: (c.kwargs["BLOCK_M"], c.num_warps))]


@triton.jit
def _tile(rows, row_mask, start, N, BLOCK_N: tl.constexpr):
    """Columns start .. start + BLOCK_N of `rows`: (cols, column mask, tile mask, offsets)."""
    cols = start + tl.arange(0, BLOCK_N)
    mask_n = cols < N
    return cols, mask_n, row_mask[:, None] & mask_n[None, :], rows[:, None] * N + cols[None, :]


@triton.jit
def _load_input(
    x_ptr,
    r_ptr,
    s_ptr,
    xb_ptr,
    cols,
    mask_n,
    offs,
    mask,
    HAS_RES: tl.constexpr,
    HAS_XB: tl.constexpr,
    STORE_SUM: tl.constexpr,
):
    """The normalised input in fp32: x, or x (+ x_bias) + residual rounded to the sum's dtype
    (stored if STORE_SUM)."""
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    if HAS_RES:
        r = tl.load(r_ptr + offs, mask=mask, other=0.0)
        x = x.to(tl.float32) + r.to(tl.float32)
        if HAS_XB:
            x += tl.load(xb_ptr + cols, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        x = x.to(s_ptr.dtype.element_ty)
        if STORE_SUM:
            tl.store(s_ptr + offs, x, mask=mask)
    return x.to(tl.float32)


@triton.jit
def _affine(xhat, w_ptr, b_ptr, cols, mask_n, HAS_W: tl.constexpr, HAS_B: tl.constexpr):
    y = xhat
    if HAS_W:
        y = y * tl.load(w_ptr + cols, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    if HAS_B:
        y = y + tl.load(b_ptr + cols, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    return y


@autotune(
    configs=_CONFIGS,
    key=["N", "BLOCK_N", "HAS_RES", "HAS_XB", "IS_RMS"],
    prune_configs_by={"early_config_prune": _prune},
)
@triton.jit
def _norm_fwd_kernel(
    x_ptr,
    r_ptr,
    w_ptr,
    b_ptr,
    xb_ptr,
    y_ptr,
    s_ptr,
    mean_ptr,
    rstd_ptr,
    M,
    N,
    eps,
    IS_RMS: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    HAS_RES: tl.constexpr,
    HAS_XB: tl.constexpr,
    CHUNKED: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_mask = rows < M
    if not CHUNKED:
        cols, mask_n, mask, offs = _tile(rows, row_mask, 0, N, BLOCK_N)
        x = _load_input(
            x_ptr, r_ptr, s_ptr, xb_ptr, cols, mask_n, offs, mask, HAS_RES, HAS_XB, True
        )
        if IS_RMS:
            xc = x
        else:
            mean = tl.sum(x, 1) / N
            xc = tl.where(mask, x - mean[:, None], 0.0)
        rstd = tl.rsqrt(tl.sum(xc * xc, 1) / N + eps)
        y = _affine(xc * rstd[:, None], w_ptr, b_ptr, cols, mask_n, HAS_W, HAS_B)
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        # Statistics in one streaming pass: sums of (x - shift) and its square, shifted
        # by each row's first element so that a large mean does not cancel the variance.
        shift = tl.zeros([BLOCK_M], dtype=tl.float32)
        if not IS_RMS:
            cols, mask_n, mask, offs = _tile(rows, row_mask, 0, N, BLOCK_N)
            first = _load_input(
                x_ptr, r_ptr, s_ptr, xb_ptr, cols, mask_n, offs, mask, HAS_RES, HAS_XB, False
            )
            shift = tl.sum(tl.where(cols[None, :] == 0, first, 0.0), 1)
        acc1 = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        acc2 = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for start in range(0, N, BLOCK_N):
            cols, mask_n, mask, offs = _tile(rows, row_mask, start, N, BLOCK_N)
            x = _load_input(
                x_ptr, r_ptr, s_ptr, xb_ptr, cols, mask_n, offs, mask, HAS_RES, HAS_XB, True
            )
            v = tl.where(mask, x - shift[:, None], 0.0)
            acc1 += v
            acc2 += v * v
        var = tl.sum(acc2, 1) / N  # RMSNorm: the mean square
        if not IS_RMS:
            shifted_mean = tl.sum(acc1, 1) / N
            var = tl.maximum(var - shifted_mean * shifted_mean, 0.0)
            mean = shift + shifted_mean
        rstd = tl.rsqrt(var + eps)
        for start in range(0, N, BLOCK_N):
            cols, mask_n, mask, offs = _tile(rows, row_mask, start, N, BLOCK_N)
            x = _load_input(
                x_ptr, r_ptr, s_ptr, xb_ptr, cols, mask_n, offs, mask, HAS_RES, HAS_XB, False
            )
            if not IS_RMS:
                x = x - mean[:, None]
            y = _affine(x * rstd[:, None], w_ptr, b_ptr, cols, mask_n, HAS_W, HAS_B)
            tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)
    if not IS_RMS:
        tl.store(mean_ptr + rows, mean, mask=row_mask)
    tl.store(rstd_ptr + rows, rstd, mask=row_mask)


@triton.jit
def _bwd_terms(
    x_ptr,
    dy_ptr,
    w_ptr,
    mean,
    rstd,
    offs,
    cols,
    mask,
    mask_n,
    IS_RMS: tl.constexpr,
    HAS_W: tl.constexpr,
):
    """x-hat, dy and w * dy for a tile, in fp32 (zero where masked)."""
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if not IS_RMS:
        x = tl.where(mask, x - mean[:, None], 0.0)
    xhat = x * rstd[:, None]
    wdy = dy
    if HAS_W:
        wdy = dy * tl.load(w_ptr + cols, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    return xhat, dy, wdy


@triton.jit
def _row_stats(mean_ptr, rstd_ptr, rows, row_mask, IS_RMS: tl.constexpr):
    """The forward's saved (mean, rstd) of `rows`; RMSNorm has no mean (rstd stands in)."""
    rstd = tl.load(rstd_ptr + rows, mask=row_mask, other=0.0)
    mean = rstd
    if not IS_RMS:
        mean = tl.load(mean_ptr + rows, mask=row_mask, other=0.0)
    return mean, rstd


@triton.jit
def _bwd_dx(
    xhat, wdy, c1, c2, rstd, ds_ptr, offs, mask, IS_RMS: tl.constexpr, HAS_DRES: tl.constexpr
):
    """dx = rstd * (w*dy - x-hat * mean(x-hat * w*dy) - mean(w*dy)), plus the sum's own gradient."""
    dx = wdy - xhat * c1[:, None]
    if not IS_RMS:
        dx = dx - c2[:, None]
    dx = dx * rstd[:, None]
    if HAS_DRES:
        dx += tl.load(ds_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    return dx


@triton.jit
def _store_dx(dx, dx_ptr, dn_ptr, offs, mask, HAS_NARROW: tl.constexpr):
    """dx in the normalised input's dtype, and also rounded to the narrower one if asked."""
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
    if HAS_NARROW:
        tl.store(dn_ptr + offs, dx.to(dn_ptr.dtype.element_ty), mask=mask)


@autotune(
    configs=_CONFIGS,
    key=["N", "BLOCK_N", "HAS_DRES", "HAS_NARROW", "HAS_XB", "IS_RMS"],
    prune_configs_by={"early_config_prune": _prune},
)
@triton.jit
def _norm_bwd_kernel(
    dy_ptr,
    x_ptr,
    w_ptr,
    mean_ptr,
    rstd_ptr,
    ds_ptr,
    dx_ptr,
    dn_ptr,
    part_ptr,
    M,
    N,
    IS_RMS: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    HAS_DRES: tl.constexpr,
    HAS_NARROW: tl.constexpr,
    HAS_XB: tl.constexpr,
    CHUNKED: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    # This program's rows of the partial sums: dweight, then dbias, then d(x_bias).
    dw_part = part_ptr + pid.to(tl.int64) * N
    db_part = dw_part
    if HAS_W:
        db_part += programs.to(tl.int64) * N
    dxb_part = db_part
    if HAS_B:
        dxb_part += programs.to(tl.int64) * N
    if not CHUNKED:
        cols = tl.arange(0, BLOCK_N)
        mask_n = cols < N
        dw_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        db_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        dxb_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        for start in range(pid * BLOCK_M, M, programs * BLOCK_M):
            rows = (start + tl.arange(0, BLOCK_M)).to(tl.int64)
            row_mask = rows < M
            _, _, mask, offs = _tile(rows, row_mask, 0, N, BLOCK_N)
            mean, rstd = _row_stats(mean_ptr, rstd_ptr, rows, row_mask, IS_RMS)
            xhat, dy, wdy = _bwd_terms(
                x_ptr, dy_ptr, w_ptr, mean, rstd, offs, cols, mask, mask_n, IS_RMS, HAS_W
            )
            c1 = tl.sum(xhat * wdy, 1) / N
            c2 = tl.sum(wdy, 1) / N
            dx = _bwd_dx(xhat, wdy, c1, c2, rstd, ds_ptr, offs, mask, IS_RMS, HAS_DRES)
            _store_dx(dx, dx_ptr, dn_ptr, offs, mask, HAS_NARROW)
            if HAS_W:
                dw_acc += tl.sum(dy * xhat, 0)
            if HAS_B:
                db_acc += tl.sum(dy, 0)
            if HAS_XB:
                dxb_acc += tl.sum(dx, 0)
        if HAS_W:
            tl.store(dw_part + cols, dw_acc, mask=mask_n)
        if HAS_B:
            tl.store(db_part + cols, db_acc, mask=mask_n)
        if HAS_XB:
            tl.store(dxb_part + cols, dxb_acc, mask=mask_n)
    else:
        # Wide rows: two streaming passes per row block (the two row sums, then dx), with
        # this program's partial sums read, added to and written back in global memory.
        if HAS_W or HAS_B or HAS_XB:
            for start in range(0, N, BLOCK_N):
                cols = start + tl.arange(0, BLOCK_N)
                zeros = tl.zeros([BLOCK_N], dtype=tl.float32)
                if HAS_W:
                    tl.store(dw_part + cols, zeros, mask=cols < N)
                if HAS_B:
                    tl.store(db_part + cols, zeros, mask=cols < N)
                if HAS_XB:
                    tl.store(dxb_part + cols, zeros, mask=cols < N)
            tl.debug_barrier()
        for row_start in range(pid * BLOCK_M, M, programs * BLOCK_M):
            rows = (row_start + tl.arange(0, BLOCK_M)).to(tl.int64)
            row_mask = rows < M
            mean, rstd = _row_stats(mean_ptr, rstd_ptr, rows, row_mask, IS_RMS)
            acc1 = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            acc2 = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            for start in range(0, N, BLOCK_N):
                cols, mask_n, mask, offs = _tile(rows, row_mask, start, N, BLOCK_N)
                xhat, dy, wdy = _bwd_terms(
                    x_ptr, dy_ptr, w_ptr, mean, rstd, offs, cols, mask, mask_n, IS_RMS, HAS_W
                )
                acc1 += xhat * wdy
                acc2 += wdy
            c1 = tl.sum(acc1, 1) / N
            c2 = tl.sum(acc2, 1) / N
            for start in range(0, N, BLOCK_N):
                cols, mask_n, mask, offs = _tile(rows, row_mask, start, N, BLOCK_N)
                xhat, dy, wdy = _bwd_terms(
                    x_ptr, dy_ptr, w_ptr, mean, rstd, offs, cols, mask, mask_n, IS_RMS, HAS_W
                )
                dx = _bwd_dx(xhat, wdy, c1, c2, rstd, ds_ptr, offs, mask, IS_RMS, HAS_DRES)
                _store_dx(dx, dx_ptr, dn_ptr, offs, mask, HAS_NARROW)
                if HAS_W:
                    dw = tl.load(dw_part + cols, mask=mask_n, other=0.0) + tl.sum(dy * xhat, 0)
                    tl.store(dw_part + cols, dw, mask=mask_n)
                if HAS_B:
                    db = tl.load(db_part + cols, mask=mask_n, other=0.0) + tl.sum(dy, 0)
                    tl.store(db_part + cols, db, mask=mask_n)
                if HAS_XB:
                    dxb = tl.load(dxb_part + cols, mask=mask_n, other=0.0) + tl.sum(dx, 0)
                    tl.store(dxb_part + cols, dxb, mask=mask_n)
            # Every thread's read-add-write of the partial sums lands before the next row block.
            tl.debug_barrier()


def check_eps(eps, what: str) -> float:
    """`eps` as a float, refused when negative or NaN (a NaN output for every row)."""
    value = backend.number(eps, f"{what} eps")
    if not value >= 0:  # also refuses NaN
        raise backend.KernelError(f"{what} eps={eps} must be >= 0 (it keeps 1/sqrt finite)")
    return value


def check_inputs(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    what: str,
    out_dtype: torch.dtype | None = None,
    **params,
) -> None:
    """Dtype, shape and device checks shared by both norms; `params` are the [N] vectors
    (weight, bias, x_bias; each may be None)."""
    backend.check_dtype(x, DTYPES, f"{what} input")
    if x.dim() == 0 or x.shape[-1] == 0:
        raise backend.KernelError(
            f"{what} normalises the last dimension; got shape {tuple(x.shape)}"
        )
    if out_dtype is not None and out_dtype not in DTYPES:
        raise backend.KernelError(f"{what} out_dtype is {out_dtype}; use fp32, fp16 or bf16")
    tensors = [x]
    for name, p in params.items():
        if p is None:
            continue
        backend.check_dtype(p, DTYPES, f"{what} {name}")
        if tuple(p.shape) != (x.shape[-1],):
            raise backend.KernelError(
                f"{what} {name} has shape {tuple(p.shape)}; expected ({x.shape[-1]},) for input "
                f"shape {tuple(x.shape)}"
            )
        tensors.append(p)
    if residual is not None:
        if residual.shape != x.shape:
            raise backend.KernelError(
                f"{what} residual has shape {tuple(residual.shape)}; expected the input's "
                f"{tuple(x.shape)}"
            )
        mixed_ok = torch.float32 in (x.dtype, residual.dtype) and residual.dtype in DTYPES
        if residual.dtype != x.dtype and not mixed_ok:
            raise backend.KernelError(
                f"{what} residual is {backend.dtype_name(residual.dtype)} and the input "
                f"{backend.dtype_name(x.dtype)}; use one dtype, or make one of the two float32"
            )
        tensors.append(residual)
    elif params.get("x_bias") is not None:
        raise backend.KernelError(
            f"{what} takes x_bias only with a residual (it is added to x before the residual)"
        )
    backend.check_same_device(*tensors)


def sum_dtype(x: torch.Tensor, residual: torch.Tensor | None) -> torch.dtype:
    """The dtype of the normalised input: x's, or that of `x + residual` in PyTorch."""
    return x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)


def sum_reference(x, residual, x_bias):
    """The references' normalised input: x, or x (+ x_bias) + residual in the sum's dtype,
    formed in fp32 (or wider) and rounded once, as the kernels form it."""
    if residual is None:
        return x
    if x_bias is None:
        return x + residual
    dtype = sum_dtype(x, residual)
    wide = torch.promote_types(dtype, torch.float32)
    return (x.to(wide) + x_bias.to(wide) + residual.to(wide)).to(dtype)


def narrow_dtype(x_dtype: torch.dtype, residual_dtype: torch.dtype | None, wide: torch.dtype):
    """The dtype of whichever of x and the residual is narrower than their sum, or None."""
    narrower = {x_dtype, residual_dtype} - {wide, None}
    return narrower.pop() if narrower else None


def input_dtypes(x: torch.Tensor, residual: torch.Tensor | None):
    """What the backward needs to know of the inputs: (x's dtype, the residual's or None)."""
    return x.dtype, None if residual is None else residual.dtype


def input_grads(dx, dn, x_dtype, residual_dtype):
    """(x's gradient, the residual's or None) from the backward's dx (the sum's dtype) and dn
    (dx rounded to the narrower input's dtype, or empty)."""

    def grad(dtype):
        return dx if dtype == dx.dtype else dn

    return grad(x_dtype), None if residual_dtype is None else grad(residual_dtype)


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1]).contiguous()


def _vector(t: torch.Tensor | None, default: torch.Tensor) -> torch.Tensor:
    """A [N] parameter as the kernels read it, at unit stride (an expanded or sliced weight
    was read as if contiguous: wrong outputs), or `default` in place of a missing one."""
    return default if t is None else t.contiguous()


def _block_n(n: int, max_block: int) -> int:
    return backend.next_power_of_2(n) if n <= max_block else CHUNK_BLOCK


@functools.cache
def _backward_programs(device: torch.device) -> int:
    if device.type != "cuda":
        return 3  # the interpreter: a few programs, each walking several row blocks
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return sms * BWD_PROGRAMS_PER_SM


def forward(x, weight, bias, residual, eps: float, rms: bool, out_dtype=None, x_bias=None):
    """Launch the forward: (y, x (+ x_bias) + residual or an empty tensor, mean (LayerNorm
    only), rstd).

    y is in `out_dtype`, by default the normalised input's dtype (`sum_dtype`)."""
    x2 = _rows(x)
    M, N = x2.shape
    wide = sum_dtype(x, residual)
    y = backend.empty(M, N, dtype=out_dtype or wide, device=x.device)
    s = (
        backend.empty(M, N, dtype=wide, device=x.device)
        if residual is not None
        else x2.new_empty(0)
    )
    rstd = backend.empty(M, dtype=torch.float32, device=x.device)
    mean = rstd if rms else backend.empty(M, dtype=torch.float32, device=x.device)
    if M:
        block_n = _block_n(N, FWD_MAX_BLOCK)
        launch(
            _norm_fwd_kernel,
            lambda meta: (backend.cdiv(M, meta["BLOCK_M"]),),
            (N,),  # with the flags, BLOCK_N and the tensors' dtypes that launch adds
            x2,
            _rows(residual) if residual is not None else x2,
            _vector(weight, x2),
            _vector(bias, x2),
            _vector(x_bias, x2),
            y,
            s if residual is not None else y,
            mean,
            rstd,
            M,
            N,
            eps,
            IS_RMS=rms,
            HAS_W=weight is not None,
            HAS_B=bias is not None,
            HAS_RES=residual is not None,
            HAS_XB=x_bias is not None,
            CHUNKED=N > FWD_MAX_BLOCK,
            BLOCK_N=block_n,
        )
    return y.view(x.shape), s.view(x.shape) if residual is not None else s, mean, rstd


def backward(dy, x, weight, bias, mean, rstd, dsum, rms: bool, narrow=None, x_bias=None):
    """Launch the backward: (dx, dx rounded to `narrow` or empty, dweight, dbias, d(x_bias),
    each of the last three empty without its parameter); `x` is the normalised input and dx
    has its dtype."""
    x2, dy2 = _rows(x), _rows(dy)
    M, N = x2.shape
    dx = backend.empty_like(x2)
    dn = backend.empty(M, N, dtype=narrow, device=x.device) if narrow else x2.new_empty(0)
    programs = min(M, _backward_programs(x.device))
    params = [p for p in (weight, bias, x_bias) if p is not None]
    parts = backend.empty(len(params), programs, N, dtype=torch.float32, device=x.device)
    if M:
        launch(
            _norm_bwd_kernel, (programs,), (N,),
            dy2, x2, _vector(weight, x2), mean, rstd,
            _rows(dsum) if dsum is not None else dy2, dx, dn if narrow else dx, parts, M, N,
            IS_RMS=rms, HAS_W=weight is not None, HAS_B=bias is not None,
            HAS_DRES=dsum is not None, HAS_NARROW=narrow is not None, HAS_XB=x_bias is not None,
            CHUNKED=N > BWD_MAX_BLOCK, BLOCK_N=_block_n(N, BWD_MAX_BLOCK),
        )  # fmt: skip
    grads = [backend.empty_like(p) for p in params]
    if grads:
        sum_rows(parts, programs, N, N, *grads)
    dw, db, dxb = (
        grads.pop(0) if p is not None else x.new_empty(0) for p in (weight, bias, x_bias)
    )
    return dx.view(x.shape), dn.view(x.shape) if narrow else dn, dw, db, dxb


def fake_forward(x, residual, rms: bool, out_dtype=None):
    """Shapes and dtypes of `forward`'s outputs, for the fake (meta) implementations."""
    rows = math.prod(x.shape[:-1])
    wide = sum_dtype(x, residual)
    y = x.new_empty(x.shape, dtype=out_dtype or wide)
    s = x.new_empty(x.shape, dtype=wide) if residual is not None else x.new_empty(0)
    rstd = x.new_empty(rows, dtype=torch.float32)
    return y, s, rstd if rms else x.new_empty(rows, dtype=torch.float32), rstd


def fake_backward(x, weight, bias, narrow=None, x_bias=None):
    """Shapes and dtypes of `backward`'s outputs."""
    dx = torch.empty_like(x, memory_format=torch.contiguous_format)
    dn = x.new_empty(x.shape, dtype=narrow) if narrow else x.new_empty(0)
    params = (weight, bias, x_bias)
    return dx, dn, *(torch.empty_like(p) if p is not None else x.new_empty(0) for p in params)
