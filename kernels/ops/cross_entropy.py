"""Cross-entropy over `[N, V]` logits for large vocabularies, with `ignore_index` and label smoothing.

One program per row streams the vocabulary in BLOCK_V chunks with an online
softmax (running max and rescaled sum, one exp per logit), so V = 50304 and
beyond cost no extra pass for the maximum. When the logits need a gradient the
same program immediately streams its row a second time, mostly from L2, and
writes d(loss)/d(logits) for a unit upstream gradient (Liger-style): the
backward then only rescales it in place, and does nothing at all when the
upstream gradient is 1, the usual case for a mean or summed loss. Peak memory
is one gradient-sized buffer, against three logits-sized ones for eager
`F.cross_entropy` (log-softmax output, gradient of it, gradient of the logits).

`inplace_backward=True` goes further when the logits are a temporary that
nothing else reads: the forward saves only the per-row log-sum-exp, and the
backward overwrites the logits with their own gradient, so no buffer of the
logits' size is ever allocated.

Label smoothing follows PyTorch: with smoothing e over V classes,
loss = (1 - e) * (lse - x_target) + e * (lse - mean(x)). "mean" divides by the
number of non-ignored rows; with none, like PyTorch, the loss is NaN (0 / 0)
and the gradient is zero.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from okto.kernels import backend
from okto.kernels.autotune import autotune, config, launch

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
TARGET_DTYPES = (torch.int64, torch.int32)
REDUCTIONS = ("mean", "sum", "none")

# Vocabulary block x warps; the first (small, several blocks per row in tests) is what
# the interpreter runs. 16 fp32 logits per thread keep every sm_90 config spill-free.
_CONFIGS = [config(BLOCK_V=1024, num_warps=4, num_stages=1)] + [
    config(BLOCK_V=v, num_warps=w, num_stages=1)
    for v, w in ((4096, 8), (4096, 16), (8192, 16), (8192, 32), (16384, 32))
]
SCALE_BLOCK = 4096


def _prune(configs, named_args, **kwargs):
    """No vocabulary block wider than the vocabulary itself."""
    widest = max(1024, backend.next_power_of_2(named_args["V"]))
    return [c for c in configs if c.kwargs["BLOCK_V"] <= widest]


@autotune(
    configs=_CONFIGS,
    key=["V", "SMOOTH", "WRITE_GRAD", "FROM_LSE"],
    prune_configs_by={"early_config_prune": _prune},
    # The gradient may be written over the logits: tuning runs restore them.
    restore_value=["grad_ptr"],
)
@triton.jit
def _ce_kernel(
    logits_ptr,
    target_ptr,
    loss_ptr,
    lse_ptr,
    grad_ptr,
    grad_loss_ptr,
    n_valid_ptr,
    V,
    stride_logits,
    stride_grad,
    stride_grad_loss,
    ignore_index,
    smoothing,
    MEAN: tl.constexpr,
    SMOOTH: tl.constexpr,
    WRITE_GRAD: tl.constexpr,
    FROM_LSE: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """One row: the loss and log-sum-exp, then (WRITE_GRAD) the gradient.

    FROM_LSE is the in-place backward: the log-sum-exp saved by the forward is
    read instead of recomputed, and the gradient is scaled by the upstream one.
    """
    row = tl.program_id(0).to(tl.int64)
    src = logits_ptr + row * stride_logits
    target = tl.load(target_ptr + row)
    valid = target != ignore_index
    if FROM_LSE:
        lse = tl.load(lse_ptr + row)
    else:
        m = float("-inf")  # running max
        d = 0.0  # running sum of exp(x - m)
        total = 0.0  # sum of the logits, for label smoothing
        for start in range(0, V, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            x = tl.load(
                src + cols, mask=cols < V, other=float("-inf"), eviction_policy="evict_last"
            ).to(tl.float32)
            m_new = tl.maximum(m, tl.max(x, 0))
            m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # all -inf so far: no NaN
            d = d * tl.exp(m - m_ref) + tl.sum(tl.exp(x - m_ref), 0)
            if SMOOTH:
                total += tl.sum(tl.where(cols < V, x, 0.0), 0)
            m = m_new
        lse = m + tl.log(d)
        # An out-of-range target reads column 0 rather than out of bounds, and its loss is
        # NaN: no made-up number, and no host sync to check the targets.
        in_range = (target >= 0) & (target < V)
        x_target = tl.load(src + tl.where(valid & in_range, target, 0))
        loss = lse - x_target.to(tl.float32)
        if SMOOTH:
            loss = lse - (1.0 - smoothing) * x_target.to(tl.float32) - smoothing / V * total
        loss = tl.where(in_range, loss, float("nan"))
        tl.store(loss_ptr + row, tl.where(valid, loss, 0.0))
        tl.store(lse_ptr + row, lse)
    if WRITE_GRAD:
        scale = tl.where(valid, 1.0, 0.0)
        if MEAN:
            scale = scale / tl.maximum(tl.load(n_valid_ptr).to(tl.float32), 1.0)
        if FROM_LSE:
            scale *= tl.load(grad_loss_ptr + row * stride_grad_loss).to(tl.float32)
        dst = grad_ptr + row * stride_grad
        # scale * (softmax - (1 - e) * onehot(target) - e / V), streamed over the row again
        # from its end, the blocks the first pass read last and L2 most likely still holds
        # (the first pass asked L2 to keep them; this one lets them go, and the gradient is
        # stored as streaming data that would only push them out).
        n_blocks = tl.cdiv(V, BLOCK_V)
        for i in range(0, n_blocks):
            cols = (n_blocks - 1 - i) * BLOCK_V + tl.arange(0, BLOCK_V)
            mask = cols < V
            x = tl.load(src + cols, mask=mask, other=0.0, eviction_policy="evict_first")
            x = x.to(tl.float32)
            g = tl.exp(x - lse) - smoothing / V - tl.where(cols == target, 1.0 - smoothing, 0.0)
            g = (g * scale).to(dst.dtype.element_ty)
            tl.store(dst + cols, g, mask=mask, cache_modifier=".cs")


@triton.jit
def _scale_rows_kernel(x_ptr, g_ptr, numel, C, PER_ROW: tl.constexpr, BLOCK: tl.constexpr):
    """x *= g (a scalar, or one factor per row of C elements); factors of exactly 1 read no x."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    rows = offs // C if PER_ROW else offs * 0  # a scalar factor: every lane reads g[0]
    g = tl.load(g_ptr + rows, mask=offs < numel, other=1.0).to(tl.float32)
    todo = (offs < numel) & (g != 1.0)
    x = tl.load(x_ptr + offs, mask=todo, other=0.0).to(tl.float32)
    tl.store(x_ptr + offs, (x * g).to(x_ptr.dtype.element_ty), mask=todo)


@backend.eager_fast_path
@torch.library.custom_op("okto::scale_rows_", mutates_args=("x",))
def scale_rows_(x: torch.Tensor, g: torch.Tensor) -> None:
    """In place, x (contiguous) times g: a scalar, or one factor per row (along dim 0).

    The backward of the losses: their gradients were computed for a unit upstream
    gradient, so when that gradient is 1 this pass reads g and nothing else.
    """
    numel = x.numel()
    if numel == 0:
        return
    launch(
        _scale_rows_kernel, (backend.cdiv(numel, SCALE_BLOCK),), (),
        x, g.contiguous(), numel, numel // x.shape[0],
        PER_ROW=g.numel() > 1, BLOCK=SCALE_BLOCK, num_warps=8,
    )  # fmt: skip


@scale_rows_.register_fake
def _(x, g):
    return None


def _rows_contiguous(logits: torch.Tensor) -> torch.Tensor:
    return logits if logits.stride(-1) == 1 else logits.contiguous()


def run_rows(
    logits,
    target,
    lse,
    n_valid,
    ignore_index,
    smoothing,
    mean,
    *,
    loss_rows=None,
    grad=None,
    grad_loss=None,
):
    """Launch `_ce_kernel` over `[n, V]` logits with unit stride along V.

    Forward: `loss_rows` and `lse` are written, and the gradient into `grad` unless it
    is None (`grad` may be `logits` itself, as in the fused linear CE). In-place
    backward (`grad_loss` given): `lse` is read and the gradient written over `logits`.
    """
    n, V = logits.shape
    if n == 0:
        return
    from_lse = grad_loss is not None
    if from_lse:
        grad = logits
    launch(
        _ce_kernel,
        (n,),
        (V,),
        logits,
        target,
        loss_rows if loss_rows is not None else lse,
        lse,
        grad if grad is not None else lse,
        grad_loss if from_lse else lse,
        n_valid,
        V,
        logits.stride(0),
        grad.stride(0) if grad is not None else 0,
        1 if from_lse and grad_loss.numel() > 1 else 0,
        ignore_index,
        smoothing,
        MEAN=mean,
        SMOOTH=smoothing > 0,
        WRITE_GRAD=grad is not None,
        FROM_LSE=from_lse,
    )


def reduce_loss(loss_rows, n_valid, reduction: str, dtype: torch.dtype) -> torch.Tensor:
    """Per-row fp32 losses to the requested reduction, in the logits' dtype."""
    if reduction == "none":
        return loss_rows.to(dtype)
    total = loss_rows.sum()
    return (total / n_valid if reduction == "mean" else total).to(dtype)


@backend.eager_fast_path
@torch.library.custom_op("okto::cross_entropy", mutates_args=())
def _cross_entropy_op(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int,
    label_smoothing: float,
    reduction: str,
    compute_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, per-row log-sum-exp in fp32, d loss / d logits for a unit upstream gradient or empty)."""
    logits, target = _rows_contiguous(logits), target.contiguous()
    N = logits.shape[0]
    n_valid = (target != ignore_index).sum()
    loss_rows = backend.empty(N, dtype=torch.float32, device=logits.device)
    lse = backend.empty(N, dtype=torch.float32, device=logits.device)
    grad = backend.empty_like(logits) if compute_grad else None
    run_rows(
        logits,
        target,
        lse,
        n_valid,
        ignore_index,
        label_smoothing,
        reduction == "mean",
        loss_rows=loss_rows,
        grad=grad,
    )
    loss = reduce_loss(loss_rows, n_valid, reduction, logits.dtype)
    return loss, lse, grad if grad is not None else logits.new_empty(0)


@_cross_entropy_op.register_fake
def _(logits, target, ignore_index, label_smoothing, reduction, compute_grad):
    N = logits.shape[0]
    loss = logits.new_empty(N) if reduction == "none" else logits.new_empty(())
    grad = logits.new_empty(logits.shape) if compute_grad else logits.new_empty(0)
    return loss, logits.new_empty(N, dtype=torch.float32), grad


@backend.eager_fast_path
@torch.library.custom_op("okto::cross_entropy_backward_inplace_", mutates_args=("logits",))
def _cross_entropy_backward_inplace_op(
    logits: torch.Tensor,
    target: torch.Tensor,
    lse: torch.Tensor,
    grad_loss: torch.Tensor,
    ignore_index: int,
    label_smoothing: float,
    reduction: str,
) -> None:
    """Overwrite `logits` (unit stride along V) with d loss / d logits times `grad_loss`."""
    target = target.contiguous()
    run_rows(
        logits,
        target,
        lse,
        (target != ignore_index).sum(),
        ignore_index,
        label_smoothing,
        reduction == "mean",
        grad_loss=grad_loss.contiguous(),
    )


@_cross_entropy_backward_inplace_op.register_fake
def _(logits, target, lse, grad_loss, ignore_index, label_smoothing, reduction):
    return None


def _setup_context(ctx, inputs, output):
    logits, target, ignore_index, label_smoothing, reduction, compute_grad = inputs
    _, lse, grad = output
    ctx.mark_non_differentiable(lse, grad)
    # No zeros for the gradients of lse and grad (never used): for grad that would be a
    # logits-sized allocation and memset on every backward.
    ctx.set_materialize_grads(False)
    ctx.compute_grad = compute_grad
    ctx.options = (ignore_index, label_smoothing, reduction)
    if compute_grad:
        ctx.save_for_backward(grad)
    else:
        ctx.save_for_backward(logits, target, lse)


def _backward(ctx, grad_loss, _dlse, _dgrad):
    if grad_loss is None:  # the loss did not reach the output being differentiated
        return None, None, None, None, None, None
    if ctx.compute_grad:
        (grad,) = ctx.saved_tensors
        scale_rows_(grad, grad_loss)
    else:
        grad, target, lse = ctx.saved_tensors
        _cross_entropy_backward_inplace_op(grad, target, lse, grad_loss, *ctx.options)
    return grad, None, None, None, None, None


_cross_entropy_op.register_autograd(_backward, setup_context=_setup_context)


def check_loss_options(
    ignore_index, label_smoothing, reduction, reductions=REDUCTIONS
) -> tuple[int, float]:
    """(ignore_index, label_smoothing) as Python numbers, checked: NumPy scalars count, as
    the rest of the API takes NumPy."""
    if reduction not in reductions:
        raise backend.KernelError(f"reduction={reduction!r}; use one of {reductions}")
    smoothing = backend.number(label_smoothing, "label_smoothing")
    if not 0.0 <= smoothing <= 1.0:
        raise backend.KernelError(f"label_smoothing={label_smoothing} must lie in [0, 1]")
    return backend.integer(ignore_index, "ignore_index"), smoothing


def check_target(target: torch.Tensor, rows: int, classes: int, what: str) -> None:
    """Integer targets, one per row, over at least one class: with none the kernel read a
    target logit from an empty row (a segfault in the interpreter, garbage on a GPU)."""
    if classes == 0:
        raise backend.KernelError(f"{what} needs at least one class; the vocabulary is empty")
    backend.check_dtype(target, TARGET_DTYPES, f"{what} target")
    if target.shape != (rows,):
        raise backend.KernelError(
            f"{what} target has shape {tuple(target.shape)}; expected ({rows},), one class per row"
        )


def cross_entropy_reference(
    logits, target, ignore_index=-100, label_smoothing=0.0, reduction="mean"
):
    """`F.cross_entropy` with the kernels' rule for a target outside [0, V): a NaN row.

    PyTorch raises on the CPU and fails a device assert on CUDA, which poisons the
    process; a NaN row is just as loud, and both backends then agree."""
    target = target.long()
    out_of_range = (target != ignore_index) & ((target < 0) | (target >= logits.shape[-1]))
    rows = torch.nn.functional.cross_entropy(
        logits,
        target.masked_fill(out_of_range, 0),
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        reduction="none",
    ).masked_fill(out_of_range, float("nan"))
    wide = rows.to(torch.promote_types(rows.dtype, torch.float32))
    return reduce_loss(wide, (target != ignore_index).sum(), reduction, rows.dtype)


def cross_entropy(
    logits,
    target,
    ignore_index=-100,
    label_smoothing=0.0,
    reduction="mean",
    inplace_backward=False,
):
    """Cross-entropy of `[N, V]` logits (fp32, fp16 or bf16) against `[N]` integer targets.

    Same semantics and output dtype as `F.cross_entropy` for 2-D logits. Rows whose
    target is `ignore_index` contribute neither loss nor gradient. A target outside
    [0, V) gives its row a NaN loss (where PyTorch raises or fails a device assert). With
    `inplace_backward=True` the backward writes the gradient over `logits`
    itself (no extra logits-sized memory): use it only when nothing reads the
    logits after the loss, e.g. the fresh output of an lm_head.
    """
    ignore_index, label_smoothing = check_loss_options(ignore_index, label_smoothing, reduction)
    backend.check_dtype(logits, DTYPES, "cross_entropy logits")
    if logits.dim() != 2:
        raise backend.KernelError(
            f"cross_entropy takes [N, V] logits, got shape {tuple(logits.shape)}; flatten the "
            "leading dimensions (logits.flatten(0, -2), target.flatten())"
        )
    check_target(target, *logits.shape, "cross_entropy")
    backend.check_same_device(logits, target)
    if not backend.use_triton(logits, target):
        return cross_entropy_reference(logits, target, ignore_index, label_smoothing, reduction)
    if inplace_backward and logits.stride(-1) != 1:
        raise backend.KernelError("inplace_backward needs logits with unit stride along V")
    compute_grad = logits.requires_grad and torch.is_grad_enabled() and not inplace_backward
    loss, _, _ = _cross_entropy_op(
        logits, target, ignore_index, float(label_smoothing), reduction, compute_grad
    )
    return loss
