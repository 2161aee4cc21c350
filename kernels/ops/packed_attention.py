"""Self-attention on a packed QKV projection: `[B, S, 3 * H * D]` in, `[B, S, H * D]` out.

Models with one fused QKV projection (GPT-2's `c_attn`) split its output into q,
k and v views. Attention called on those views returns three gradients, which
autograd then concatenates into the projection's gradient: a copy of the whole
`[B, S, 3 * H * D]` tensor in every layer's backward (2.2 ms of a 43 ms GPT-2 124M
training step on an H100). This op takes the projection's output whole: the
flash-attention kernels of `attention` read q, k and v in place through their
strides, the output comes out in the `[B, S, H * D]` order the output projection
reads, and the backward writes dq, dk and dv straight into one gradient of the
packed tensor.
"""

from __future__ import annotations

import torch

from okto.kernels import backend
from okto.kernels.ops import attention as flash


def _split(packed: torch.Tensor, heads: int) -> list[torch.Tensor]:
    """q, k, v as `[B, H, S, D]` views of a `[B, S, 3 * H * D]` tensor (no copy)."""
    b, s, width = packed.shape
    parts = packed.view(b, s, 3, heads, width // (3 * heads)).unbind(2)
    return [t.transpose(1, 2) for t in parts]


def _heads_view(t: torch.Tensor, heads: int) -> torch.Tensor:
    """A `[B, S, H * D]` tensor as `[B, H, S, D]` (a view)."""
    b, s, width = t.shape
    return t.view(b, s, heads, width // heads).transpose(1, 2)


@backend.eager_fast_path
@torch.library.custom_op("okto::packed_attention", mutates_args=())
def _packed_attention_op(
    qkv: torch.Tensor, heads: int, causal: bool, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(output `[B, S, H * D]`, log-sum-exp `[B, H, S]` in fp32) for a contiguous qkv."""
    q, k, v = _split(qkv, heads)
    o, lse = flash.forward(q, k, v, None, None, causal, scale)
    b, s, width = qkv.shape
    return o.transpose(1, 2).reshape(b, s, width // 3), lse  # o is [B, S, H, D] underneath


@_packed_attention_op.register_fake
def _(qkv, heads, causal, scale):
    b, s, width = qkv.shape
    return qkv.new_empty(b, s, width // 3), qkv.new_empty(b, heads, s, dtype=torch.float32)


@backend.eager_fast_path
@torch.library.custom_op("okto::packed_attention_backward", mutates_args=())
def _packed_attention_backward_op(
    dout: torch.Tensor,
    qkv: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    heads: int,
    causal: bool,
    scale: float,
) -> torch.Tensor:
    """The gradient of the packed qkv, `[B, S, 3 * H * D]`, from the output's gradient."""
    dqkv = backend.empty(*qkv.shape, dtype=qkv.dtype, device=qkv.device)
    dq, dk, dv = _split(dqkv, heads)
    q, k, v = _split(qkv, heads)
    do, o = _heads_view(dout, heads), _heads_view(out, heads)
    flash.backward_into(dq, dk, dv, do, q, k, v, o, lse, None, None, causal, scale)
    return dqkv


@_packed_attention_backward_op.register_fake
def _(dout, qkv, out, lse, heads, causal, scale):
    return torch.empty_like(qkv, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    qkv, heads, causal, scale = inputs
    out, lse = output
    ctx.save_for_backward(qkv, out, lse)
    ctx.heads, ctx.causal, ctx.scale = heads, causal, scale
    ctx.mark_non_differentiable(lse)
    ctx.set_materialize_grads(False)


def _backward(ctx, dout, _dlse):
    if dout is None:
        return None, None, None, None
    qkv, out, lse = ctx.saved_tensors
    dqkv = _packed_attention_backward_op(
        dout.contiguous(), qkv, out, lse, ctx.heads, ctx.causal, ctx.scale
    )
    return dqkv, None, None, None


_packed_attention_op.register_autograd(_backward, setup_context=_setup_context)


def packed_attention_reference(
    qkv: torch.Tensor, heads: int, causal: bool = True, scale: float | None = None
) -> torch.Tensor:
    """The same through `attention_reference` (the score matrix materialised)."""
    b, s, width = qkv.shape
    out = flash.attention_reference(*_split(qkv, heads), causal=causal, scale=scale)
    return out.transpose(1, 2).reshape(b, s, width // 3)


def packed_attention(
    qkv: torch.Tensor, heads: int, causal: bool = True, scale: float | None = None
) -> torch.Tensor:
    """Multi-head self-attention of a packed projection `qkv` `[B, S, 3 * H * D]` (q, k, v
    one after another along the last dimension, each `H` heads of `D`); returns
    `[B, S, H * D]`, differentiable in qkv. `scale` defaults to 1/sqrt(D); fp16, bf16
    and fp32; D up to 128."""
    heads = backend.integer(heads, "packed_attention heads")
    if qkv.dim() != 3 or heads < 1 or qkv.shape[-1] % (3 * heads):
        raise backend.KernelError(
            f"packed_attention takes qkv [B, S, 3 * heads * D]; got {tuple(qkv.shape)} "
            f"with heads={heads}"
        )
    d = qkv.shape[-1] // (3 * heads)
    if d > flash.MAX_HEAD_DIM:
        raise backend.KernelError(f"head dim {d} is not supported; use 1..{flash.MAX_HEAD_DIM}")
    scale = flash.softmax_scale(scale, d)
    backend.check_dtype(qkv, flash.DTYPES, "qkv")
    if not backend.use_triton(qkv):
        return packed_attention_reference(qkv, heads, causal, scale)
    return _packed_attention_op(qkv.contiguous(), heads, bool(causal), scale)[0]
