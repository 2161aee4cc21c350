"""Linear layer + cross-entropy (`hidden @ weight.T + bias` -> CE) without the full logits.

An LM head's logits, `[tokens, vocabulary]`, are the largest activation in
training (16384 x 50304 bf16 is 1.6 GB, and eager CE keeps three of them). Here
the tokens are processed in chunks of about CHUNK_ELEMENTS logits: a chunk's
logits come from one GEMM, the cross-entropy kernel overwrites them with their
gradient in the same pass (`cross_entropy.run_rows`), and two more GEMMs
fold that into grad_hidden (its rows of the chunk) and grad_weight (accumulated
over chunks). All gradients are computed in the forward for a unit upstream
gradient; the backward only rescales them in place, and not at all when the
upstream gradient is 1. Peak memory is one chunk of logits plus the gradients
themselves.

The chunk GEMMs go through `torch.matmul` (cuBLAS); grad_weight accumulates in
the weight's dtype through `addmm_`, which adds each chunk in fp32 inside
cuBLAS before rounding once per chunk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from okto.kernels import backend
from okto.kernels.ops import cross_entropy as ce

# Logits per chunk: 2^28 keeps a chunk at 512 MiB of bf16 and GPT-2's 16384 tokens in
# four 4096-token GEMMs (larger chunks mean fewer, more efficient GEMMs and fewer
# read-modify-writes of grad_weight; smaller ones less memory).
CHUNK_ELEMENTS = 2**28


def chunk_rows(n: int, vocab: int) -> int:
    """Tokens per chunk: about CHUNK_ELEMENTS logits, a multiple of 128 when that large."""
    rows = max(1, CHUNK_ELEMENTS // vocab)
    if rows >= 256:
        rows -= rows % 128
    return min(rows, max(n, 1))


@backend.eager_fast_path
@torch.library.custom_op("okto::fused_linear_cross_entropy", mutates_args=())
def _fused_linear_cross_entropy_op(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    bias: torch.Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    reduction: str,
    hidden_grad: bool,
    weight_grad: bool,
    bias_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, grad_hidden, grad_weight, grad_bias) for a unit upstream gradient; unwanted ones empty."""
    N = hidden.shape[0]
    device = hidden.device
    target = target.contiguous()
    n_valid = (target != ignore_index).sum()
    loss_rows = backend.empty(N, dtype=torch.float32, device=device)
    lse = backend.empty(N, dtype=torch.float32, device=device)
    grad_hidden = backend.empty_like(hidden) if hidden_grad else hidden.new_empty(0)
    grad_weight = backend.empty_like(weight) if weight_grad else hidden.new_empty(0)
    grad_bias = torch.zeros(weight.shape[0], dtype=torch.float32, device=device)
    any_grad = hidden_grad or weight_grad or bias_grad
    rows = chunk_rows(N, weight.shape[0])
    for start in range(0, N, rows):
        end = min(start + rows, N)
        h = hidden[start:end]
        logits = torch.addmm(bias, h, weight.t()) if bias is not None else h @ weight.t()
        ce.run_rows(
            logits,
            target[start:end],
            lse[start:end],
            n_valid,
            ignore_index,
            label_smoothing,
            reduction == "mean",
            loss_rows=loss_rows[start:end],
            grad=logits if any_grad else None,
        )
        if hidden_grad:
            torch.mm(logits, weight, out=grad_hidden[start:end])
        if weight_grad:
            if start == 0:
                torch.mm(logits.t(), h, out=grad_weight)
            else:
                grad_weight.addmm_(logits.t(), h)
        if bias_grad:
            grad_bias += logits.sum(0, dtype=torch.float32)
    if weight_grad and N == 0:
        grad_weight.zero_()
    loss = ce.reduce_loss(loss_rows, n_valid, reduction, hidden.dtype)
    return (
        loss,
        grad_hidden,
        grad_weight,
        grad_bias.to(bias.dtype) if bias_grad else hidden.new_empty(0),
    )


@_fused_linear_cross_entropy_op.register_fake
def _(
    hidden,
    weight,
    target,
    bias,
    ignore_index,
    label_smoothing,
    reduction,
    hidden_grad,
    weight_grad,
    bias_grad,
):
    # Contiguous, as the real gradients are (empty_like kept a transposed input's strides).
    return (
        hidden.new_empty(()),
        hidden.new_empty(hidden.shape) if hidden_grad else hidden.new_empty(0),
        weight.new_empty(weight.shape) if weight_grad else hidden.new_empty(0),
        bias.new_empty(bias.shape) if bias_grad else hidden.new_empty(0),
    )


def _setup_context(ctx, inputs, output):
    _, grad_hidden, grad_weight, grad_bias = output
    ctx.mark_non_differentiable(grad_hidden, grad_weight, grad_bias)
    # No zeros for the gradients of the gradient outputs (never used): that would be a
    # hidden-sized and a weight-sized allocation and memset on every backward.
    ctx.set_materialize_grads(False)
    ctx.needed = inputs[-3:]
    ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)


def _backward(ctx, grad_loss, *_):
    if grad_loss is None:  # the loss did not reach the output being differentiated
        return (None,) * 10
    grads = []
    for grad, needed in zip(ctx.saved_tensors, ctx.needed, strict=True):
        if needed:
            ce.scale_rows_(grad, grad_loss)
        grads.append(grad if needed else None)
    grad_hidden, grad_weight, grad_bias = grads
    return grad_hidden, grad_weight, None, grad_bias, None, None, None, None, None, None


_fused_linear_cross_entropy_op.register_autograd(_backward, setup_context=_setup_context)


def fused_linear_cross_entropy_reference(
    hidden, weight, target, bias=None, ignore_index=-100, label_smoothing=0.0, reduction="mean"
):
    return ce.cross_entropy_reference(
        F.linear(hidden, weight, bias), target, ignore_index, label_smoothing, reduction
    )


def fused_linear_cross_entropy(
    hidden, weight, target, bias=None, ignore_index=-100, label_smoothing=0.0, reduction="mean"
):
    """`F.cross_entropy(F.linear(hidden, weight, bias), target, ...)` without materialising the logits.

    hidden `[N, H]`, weight `[V, H]` (the lm_head layout), optional bias `[V]`, all
    one float dtype; target `[N]` integers. reduction is "mean" or "sum" (the
    gradients are formed during the forward, which rules out per-row upstream
    gradients). The loss has hidden's dtype; an all-ignored batch gives a NaN
    mean and zero gradients, as in PyTorch.
    """
    ignore_index, label_smoothing = ce.check_loss_options(
        ignore_index, label_smoothing, reduction, reductions=("mean", "sum")
    )
    backend.check_dtype(hidden, ce.DTYPES, "fused_linear_cross_entropy hidden")
    if hidden.dim() != 2 or weight.dim() != 2 or weight.shape[1] != hidden.shape[1]:
        raise backend.KernelError(
            f"fused_linear_cross_entropy takes hidden [N, H] and weight [V, H]; got "
            f"{tuple(hidden.shape)} and {tuple(weight.shape)}"
        )
    params = [p for p in (weight, bias) if p is not None]
    for p in params:
        if p.dtype != hidden.dtype:
            raise backend.KernelError(
                f"fused_linear_cross_entropy: hidden is {hidden.dtype} but a parameter is "
                f"{p.dtype}; cast them to one dtype"
            )
    if bias is not None and bias.shape != (weight.shape[0],):
        raise backend.KernelError(
            f"bias has shape {tuple(bias.shape)}; expected ({weight.shape[0]},)"
        )
    ce.check_target(target, hidden.shape[0], weight.shape[0], "fused_linear_cross_entropy")
    backend.check_same_device(hidden, target, *params)
    if not backend.use_triton(hidden, target, *params):
        return fused_linear_cross_entropy_reference(
            hidden, weight, target, bias, ignore_index, label_smoothing, reduction
        )
    grad_on = torch.is_grad_enabled()
    loss, _, _, _ = _fused_linear_cross_entropy_op(
        hidden,
        weight,
        target,
        bias,
        ignore_index,
        float(label_smoothing),
        reduction,
        grad_on and hidden.requires_grad,
        grad_on and weight.requires_grad,
        grad_on and bias is not None and bias.requires_grad,
    )
    return loss
