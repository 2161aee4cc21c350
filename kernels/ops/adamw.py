"""AdamW's update over many tensors in one launch: `adamw_`.

One program updates BLOCK elements of one parameter. The launch reads the
tensors through tables of their addresses (one row per list: parameters,
gradients, first and second moments, step counts), so a model's ~150 tensors of
very different sizes take a single launch with no padding and no copy into a
flat buffer. The tables are cached by the tensors' addresses and sizes: in a
training loop the gradients come back at the same addresses every step (the
caching allocator, or CUDA graphs' static outputs), so they are built once.

The math is torch's fused AdamW (decoupled weight decay, bias corrections from
each tensor's step count), with its `grad_scale` (gradients are divided by it as
they are read: how clipping and loss scaling are folded in) and `found_inf`
(a non-zero value skips the update and leaves the step counts as they were).
Unlike torch's kernel it only reads the gradients (torch's writes them back
unscaled): the trainer has no use for them after the step, and the write would
cost a sixth more traffic.
Elements are read and written once each: on an H100 the update of GPT-2 124M's
fp32 state moves 28 bytes a parameter at ~2.97 TB/s, a copy's rate, where torch's
fused AdamW reached ~2.26 (docs/kernel-notes.md §11).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import triton
import triton.language as tl

from okto.kernels import backend
from okto.kernels.autotune import launch

# Elements a program updates, and its warps: 1,024 x 4 and 2,048 x 8 measured best
# (H100, GPT-2 124M's parameters); larger blocks lost up to 8%.
BLOCK = 1024
NUM_WARPS = 4
ALIGN = 16  # bytes: addresses at multiples of this let full blocks load 128-bit vectors
_ALIGN = tl.constexpr(ALIGN)
_TABLES: OrderedDict[tuple, tuple] = OrderedDict()
_MAX_TABLES = 8


@triton.jit
def _update(
    p_ptr, g_ptr, m_ptr, v_ptr, offs, mask, lr, beta1, beta2, eps, weight_decay, step, scale,
    MASKED: tl.constexpr,
):  # fmt: skip
    """One block of AdamW; MASKED blocks are a tensor's last, partial one."""
    if MASKED:
        p = tl.load(p_ptr + offs, mask=mask)
        g = tl.load(g_ptr + offs, mask=mask, eviction_policy="evict_first")
        m = tl.load(m_ptr + offs, mask=mask)
        v = tl.load(v_ptr + offs, mask=mask)
    else:
        p = tl.load(p_ptr + offs)
        g = tl.load(g_ptr + offs, eviction_policy="evict_first")
        m = tl.load(m_ptr + offs)
        v = tl.load(v_ptr + offs)
    g = g / scale
    p = p * (1.0 - lr * weight_decay)
    m = beta1 * m + (1.0 - beta1) * g
    v = beta2 * v + (1.0 - beta2) * g * g
    # beta ** step as exp2(step * log2(beta)): the step count lives on the device.
    bias1 = 1.0 - tl.exp2(step * tl.log2(beta1))
    bias2 = 1.0 - tl.exp2(step * tl.log2(beta2))
    p = p - (lr / bias1) * m / (tl.sqrt(v) / tl.sqrt(bias2) + eps)
    if MASKED:
        tl.store(p_ptr + offs, p, mask=mask)
        tl.store(m_ptr + offs, m, mask=mask)
        tl.store(v_ptr + offs, v, mask=mask)
    else:
        tl.store(p_ptr + offs, p)
        tl.store(m_ptr + offs, m)
        tl.store(v_ptr + offs, v)


@triton.jit
def _adamw_kernel(
    ADDR, NUMEL, BLOCK_TENSOR, BLOCK_START, GRAD_SCALE, FOUND_INF,
    lr, beta1, beta2, eps, weight_decay, n_tensors,
    HAS_GRAD_SCALE: tl.constexpr, HAS_FOUND_INF: tl.constexpr, ALIGNED: tl.constexpr,
    BLOCK: tl.constexpr,
):  # fmt: skip
    """ADDR is [5, n_tensors] int64: parameter, gradient, exp_avg, exp_avg_sq and step
    addresses; program i updates elements [BLOCK_START[i], + BLOCK) of tensor
    BLOCK_TENSOR[i]."""
    i = tl.program_id(0)
    t = tl.load(BLOCK_TENSOR + i)
    start = tl.load(BLOCK_START + i)
    n = tl.load(NUMEL + t)
    p_ptr = tl.load(ADDR + t).to(tl.pointer_type(tl.float32))
    g_ptr = tl.load(ADDR + n_tensors + t).to(tl.pointer_type(tl.float32))
    m_ptr = tl.load(ADDR + 2 * n_tensors + t).to(tl.pointer_type(tl.float32))
    v_ptr = tl.load(ADDR + 3 * n_tensors + t).to(tl.pointer_type(tl.float32))
    step = tl.load(tl.load(ADDR + 4 * n_tensors + t).to(tl.pointer_type(tl.float32)))
    scale = 1.0
    if HAS_GRAD_SCALE:
        scale = tl.load(GRAD_SCALE).to(tl.float32)
    run = True
    if HAS_FOUND_INF:
        run = tl.load(FOUND_INF) == 0
    if run:
        offs = start + tl.arange(0, BLOCK)
        if ALIGNED:
            p_ptr = tl.multiple_of(p_ptr, _ALIGN)
            g_ptr = tl.multiple_of(g_ptr, _ALIGN)
            m_ptr = tl.multiple_of(m_ptr, _ALIGN)
            v_ptr = tl.multiple_of(v_ptr, _ALIGN)
            offs = tl.multiple_of(start, BLOCK) + tl.arange(0, BLOCK)
            if start + BLOCK <= n:
                _update(
                    p_ptr, g_ptr, m_ptr, v_ptr, offs, None,
                    lr, beta1, beta2, eps, weight_decay, step, scale, False,
                )  # fmt: skip
            else:
                _update(
                    p_ptr, g_ptr, m_ptr, v_ptr, offs, offs < n,
                    lr, beta1, beta2, eps, weight_decay, step, scale, True,
                )  # fmt: skip
        else:
            _update(
                p_ptr, g_ptr, m_ptr, v_ptr, offs, offs < n,
                lr, beta1, beta2, eps, weight_decay, step, scale, True,
            )  # fmt: skip


def _to_device(values: list[int] | torch.Tensor, dtype: torch.dtype, device: torch.device):
    """A small host table on the device without making the host wait for the GPU."""
    table = torch.as_tensor(values, dtype=dtype)
    if device.type != "cuda":
        return table
    return table.pin_memory().to(device, non_blocking=True)


def _tables(lists: tuple[list[torch.Tensor], ...]) -> tuple:
    """(addresses, sizes, block->tensor, block->start, aligned) for these tensors, cached."""
    addresses = [t.data_ptr() for ts in lists for t in ts]
    sizes = tuple(p.numel() for p in lists[0])
    device = lists[0][0].device
    key = (device, sizes, *addresses)
    hit = _TABLES.get(key)
    if hit is not None:
        _TABLES.move_to_end(key)
        return hit
    counts = torch.tensor([backend.cdiv(n, BLOCK) for n in sizes], dtype=torch.int64)
    tensor_of_block = torch.repeat_interleave(torch.arange(len(sizes), dtype=torch.int32), counts)
    first_block = torch.cumsum(counts, 0) - counts
    start = (torch.arange(int(counts.sum())) - first_block.repeat_interleave(counts)) * BLOCK
    # Only the four element arrays are loaded in blocks; the step counts are scalars.
    aligned = all(a % ALIGN == 0 for a in addresses[: 4 * len(sizes)])
    hit = (
        _to_device(addresses, torch.int64, device),
        _to_device(list(sizes), torch.int64, device),
        _to_device(tensor_of_block, torch.int32, device),
        _to_device(start, torch.int64, device),
        aligned,
    )
    _TABLES[key] = hit
    if len(_TABLES) > _MAX_TABLES:
        _TABLES.popitem(last=False)
    return hit


def _launch(params, grads, exp_avgs, exp_avg_sqs, steps, lr, beta1, beta2, eps, weight_decay,
            grad_scale, found_inf) -> None:  # fmt: skip
    addr, numel, block_tensor, block_start, aligned = _tables(
        (params, grads, exp_avgs, exp_avg_sqs, steps)
    )
    flags = dict(HAS_GRAD_SCALE=grad_scale is not None, HAS_FOUND_INF=found_inf is not None)
    launch(
        _adamw_kernel, (block_tensor.numel(),), (),
        addr, numel, block_tensor, block_start,
        params[0] if grad_scale is None else grad_scale,
        params[0] if found_inf is None else found_inf,
        lr, beta1, beta2, eps, weight_decay, len(params),
        **flags, ALIGNED=aligned, BLOCK=BLOCK, num_warps=NUM_WARPS,
    )  # fmt: skip


def _reference(params, grads, exp_avgs, exp_avg_sqs, steps, lr, beta1, beta2, eps,
               weight_decay, grad_scale, found_inf) -> None:  # fmt: skip
    """torch's own fused AdamW kernel (CUDA and CPU), on the same tensors."""
    torch._fused_adamw_(
        params, grads, exp_avgs, exp_avg_sqs, [], steps,
        amsgrad=False, lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay, eps=eps,
        maximize=False, grad_scale=grad_scale, found_inf=found_inf,
    )  # fmt: skip


def triton_ready(params, grads, exp_avgs, exp_avg_sqs, steps) -> bool:
    """Whether `adamw_` runs the Triton kernel on these tensors: fp32 and contiguous, one
    device that runs Triton kernels, and 0-d fp32 step counts on it."""
    lists = (params, grads, exp_avgs, exp_avg_sqs)
    if not params or not backend.use_triton(params[0]):
        return False
    device = params[0].device
    for ts in (*lists, steps):
        for t in ts:
            if t.dtype != torch.float32 or t.device != device:
                return False
    for ts in lists:
        for t in ts:
            if not t.is_contiguous():
                return False
    return all(s.dim() == 0 for s in steps)


@backend.eager_fast_path
@torch.library.custom_op(
    "okto::adamw_", mutates_args=("params", "exp_avgs", "exp_avg_sqs", "steps")
)
def _adamw_op(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    steps: list[torch.Tensor],
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    grad_scale: torch.Tensor | None,
    found_inf: torch.Tensor | None,
) -> None:
    if not params:
        return
    torch._foreach_add_(steps, 1.0)
    args = (lr, beta1, beta2, eps, weight_decay, grad_scale, found_inf)
    if triton_ready(params, grads, exp_avgs, exp_avg_sqs, steps):
        _launch(params, grads, exp_avgs, exp_avg_sqs, steps, *args)
    else:
        _reference(params, grads, exp_avgs, exp_avg_sqs, steps, *args)
    if found_inf is not None:  # a skipped update does not count as a step
        torch._foreach_sub_(steps, [found_inf] * len(steps))


@_adamw_op.register_fake
def _(params, grads, exp_avgs, exp_avg_sqs, steps, lr, beta1, beta2, eps, weight_decay,
      grad_scale, found_inf):  # fmt: skip
    return None


def adamw_(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    steps: list[torch.Tensor],
    *,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    grad_scale: torch.Tensor | None = None,
    found_inf: torch.Tensor | None = None,
) -> None:
    """One AdamW step, in place, over parallel lists of tensors (torch's `_fused_adamw_`
    semantics: `steps` are counted up by one first, as 0-d fp32 tensors)."""
    n = len(params)
    if not all(len(ts) == n for ts in (grads, exp_avgs, exp_avg_sqs, steps)):
        raise backend.KernelError("adamw_: the five tensor lists must have the same length")
    for p, *others in zip(params, grads, exp_avgs, exp_avg_sqs, strict=True):
        for o in others:
            if o.shape != p.shape:
                raise backend.KernelError(
                    f"adamw_: a gradient or moment of shape {tuple(o.shape)} for a parameter "
                    f"of shape {tuple(p.shape)}"
                )
    _adamw_op(
        params, grads, exp_avgs, exp_avg_sqs, steps, float(lr), float(betas[0]),
        float(betas[1]), float(eps), float(weight_decay), grad_scale, found_inf,
    )  # fmt: skip
