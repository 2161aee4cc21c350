"""Okto attention inside Hugging Face transformers models, through their attention hook.

    from okto.kernels import hf_attention

    hf_attention.register()  # once per process; registers the name "okto"
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="okto")
    # or, on a built model: model.set_attn_implementation("okto")

`register` adds `attention_forward` to `transformers.AttentionInterface` and
`attention_mask` (SDPA's mask builder with one more shortcut) to
`AttentionMaskInterface` under the same name, so models hand this function what
they hand SDPA: `attention_mask=None` when plain causal (or full) attention is
meant, otherwise a 4-D bool mask `[B, 1, Sq, Skv]`, True where a query may attend.
The shortcut: with torch before 2.14, transformers never skips the causal mask
while compiling, and a materialised mask sent every compiled call to SDPA.
What okto's kernel can express runs on it:
- no mask: causal when the module is causal and Sq > 1 (one query sees every key);
- a bool mask that is a key-padding mask, alone or combined with the bottom-right
  causal mask (right or left padding, with or without a dynamic cache).
Everything else goes to transformers' own SDPA function unchanged: float or custom
masks, sliding windows, packed sequences, static-cache masks, masks under
torch.compile (recognising one reads its values), dropout, softcap, attention
sinks, position biases, paged caches, head dims above 128.
"""

from __future__ import annotations

import weakref

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, causal_mask_function, sdpa_mask

from okto.kernels.ops.attention import DTYPES, MAX_HEAD_DIM, attention

NAME = "okto"
# Keyword arguments whose presence (not None) means attention the kernel does not compute.
_UNSUPPORTED = ("softcap", "position_bias", "s_aux", "sinks", "cache")

_last_mask: tuple | None = (
    None  # (weakref to mask, its version, the analysis), reused across layers
)


def register(name: str = NAME) -> str:
    """Make `attn_implementation=name` use okto attention; returns the name."""
    AttentionInterface.register(name, attention_forward)
    AttentionMaskInterface.register(name, attention_mask)
    return name


def attention_mask(*args, **kwargs) -> torch.Tensor | None:
    """SDPA's mask builder, except that plain causal self-attention gives None (the kernel's
    own causal flag) under torch.compile too: no padding mask, no extra mask pattern, no
    window, and queries that are the whole key range (training, a first prefill). Those
    are Python facts, known while tracing, so no tensor value is read; a symbolic length
    (dynamic shapes, export) is not an int and keeps the mask."""
    if not args and _plain_causal(**kwargs):
        return None
    return sdpa_mask(*args, **kwargs)


def _plain_causal(
    *,
    q_length=None,
    kv_length=None,
    q_offset=0,
    kv_offset=0,
    mask_function=None,
    attention_mask=None,
    local_size=None,
    allow_is_causal_skip=True,
    **_,
) -> bool:
    return (
        allow_is_causal_skip
        and attention_mask is None
        and mask_function is causal_mask_function
        and local_size is None
        and type(q_length) is int
        and q_length > 1
        and q_length == kv_length
        and type(q_offset) is int
        and q_offset == 0
        and kv_offset == 0
    )


def _padding_analysis(mask: torch.Tensor, sq: int, skv: int):
    """(key_padding_mask [B, Skv], causal) when `mask` is a key-padding mask, alone or with
    the bottom-right causal mask; None when it is anything else."""
    if mask.dtype != torch.bool or mask.dim() != 4 or mask.shape[1] != 1:
        return None
    if tuple(mask.shape[2:]) != (sq, skv):
        return None
    # Under bottom-right causal alignment the last query row sees every key, so that row
    # is the padding mask in both cases.
    kpm = mask[:, 0, -1, :]
    full = kpm[:, None, None, :]
    if torch.equal(mask, full.expand_as(mask)):
        return kpm, False
    causal = torch.ones(sq, skv, dtype=torch.bool, device=mask.device).tril(skv - sq)
    if torch.equal(mask, full & causal):
        return kpm, True
    return None


def _analyse(mask: torch.Tensor, sq: int, skv: int):
    """`_padding_analysis`, computed once per mask object and query/key lengths: models pass
    one mask to every layer."""
    global _last_mask
    key = (mask._version, sq, skv)
    if _last_mask is not None:
        ref, last_key, result = _last_mask
        if ref() is mask and last_key == key:
            return result
    result = _padding_analysis(mask, sq, skv)
    _last_mask = (weakref.ref(mask), key, result)
    return result


def _plan(module, query, key, value, attention_mask, dropout, kwargs):
    """(causal, key_padding_mask) for okto's kernel, or None to hand the call to SDPA."""
    if dropout or any(kwargs.get(name) is not None for name in _UNSUPPORTED):
        return None
    if query.dtype not in DTYPES or len({query.dtype, key.dtype, value.dtype}) > 1:
        return None
    if query.shape[-1] > MAX_HEAD_DIM or key.shape[-1] != query.shape[-1]:
        return None
    if value.shape[-1] != query.shape[-1] or query.shape[1] % key.shape[1]:
        return None
    sq, skv = query.shape[2], key.shape[2]
    if attention_mask is None:
        is_causal = kwargs.get("is_causal")
        if is_causal is None:
            is_causal = getattr(module, "is_causal", True)
        return bool(is_causal) and sq > 1, None
    if torch.compiler.is_compiling():
        return None
    analysis = _analyse(attention_mask, sq, skv)
    if analysis is None:
        return None
    kpm, causal = analysis
    return causal, kpm.expand(query.shape[0], skv)


def _autocast_operands(*tensors: torch.Tensor) -> list[torch.Tensor]:
    device = tensors[0].device.type
    if not torch.is_autocast_enabled(device):
        return list(tensors)
    dtype = torch.get_autocast_dtype(device)
    return [t if t.dtype == dtype or not t.is_floating_point() else t.to(dtype) for t in tensors]


def attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract: query `[B, Hq, Sq, D]`, key and value
    `[B, Hkv, Skv, D]`; returns (`[B, Sq, Hq, D]` output, no attention weights).

    Under autocast the three are cast to its dtype first, as autocast casts SDPA's
    operands: Llama-style rotary embeddings computed in fp32 leave query and key in
    fp32 beside a half-precision value."""
    query, key, value = _autocast_operands(query, key, value)
    plan = _plan(module, query, key, value, attention_mask, dropout, kwargs)
    if plan is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    causal, key_padding_mask = plan
    if causal and key_padding_mask is None and key.shape[2] > query.shape[2]:
        # SDPA's convention for a prefill into an empty static cache: the keys past the
        # queries are unwritten slots, and the causal mask is aligned to the top left.
        key, value = key[:, :, : query.shape[2]], value[:, :, : query.shape[2]]
    out = attention(
        query, key, value, causal=causal, scale=scaling, key_padding_mask=key_padding_mask
    )
    return out.transpose(1, 2).contiguous(), None
