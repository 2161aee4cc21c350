"""What okto's own decoder needs to know about a model, read from its Hugging Face config.

`spec_for` returns a `Spec` for the architectures the engine implements (the
GPT-2 and Llama families) or the reason it cannot, which the caller reports
when it falls back to Hugging Face `generate`.
"""

from __future__ import annotations

from dataclasses import dataclass

ACTIVATIONS = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu": "gelu",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True)
class Spec:
    """The shape and flavour of a decoder-only transformer."""

    family: str  # "gpt2" or "llama"
    vocab_size: int
    n_layer: int
    n_head: int
    n_kv_head: int
    dim: int
    head_dim: int
    hidden: int  # MLP width
    max_positions: int
    norm_eps: float
    activation: str
    tie_embeddings: bool
    attn_bias: bool = False
    mlp_bias: bool = False
    scale_by_layer: bool = False  # GPT-2's scale_attn_by_inverse_layer_idx
    rope: tuple = ()  # sorted items of the RoPE parameters (hashable), llama family only

    @property
    def rope_params(self) -> dict:
        return dict(self.rope)


def spec_for(config) -> Spec | str:
    """The Spec for a transformers config object, or why okto's engine does not run it."""
    kind = getattr(config, "model_type", None)
    if kind == "gpt2":
        return _gpt2(config)
    if kind == "llama":
        return _llama(config)
    return f"okto's engine implements gpt2 and llama, not {kind!r}"


def _gpt2(c) -> Spec | str:
    activation = ACTIVATIONS.get(c.activation_function)
    if activation is None:
        return f"GPT-2 activation {c.activation_function!r} is not implemented"
    if getattr(c, "add_cross_attention", False):
        return "GPT-2 with cross-attention is an encoder-decoder, not a decoder-only model"
    if not getattr(c, "scale_attn_weights", True):
        return "GPT-2 without attention scaling is not implemented"
    return Spec(
        family="gpt2",
        vocab_size=c.vocab_size,
        n_layer=c.n_layer,
        n_head=c.n_head,
        n_kv_head=c.n_head,
        dim=c.n_embd,
        head_dim=c.n_embd // c.n_head,
        hidden=c.n_inner or 4 * c.n_embd,
        max_positions=c.n_positions,
        norm_eps=c.layer_norm_epsilon,
        activation=activation,
        tie_embeddings=getattr(c, "tie_word_embeddings", True),
        attn_bias=True,
        mlp_bias=True,
        scale_by_layer=bool(getattr(c, "scale_attn_by_inverse_layer_idx", False)),
    )


def _llama(c) -> Spec | str:
    activation = ACTIVATIONS.get(c.hidden_act)
    if activation != "silu":
        return f"Llama activation {c.hidden_act!r} is not implemented"
    rope = _rope_parameters(c)
    kind = rope.get("rope_type", "default")
    if kind not in ROPE_TYPES:
        return f"RoPE scaling {kind!r} is not implemented (okto has {', '.join(ROPE_TYPES)})"
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return Spec(
        family="llama",
        vocab_size=c.vocab_size,
        n_layer=c.num_hidden_layers,
        n_head=c.num_attention_heads,
        n_kv_head=c.num_key_value_heads or c.num_attention_heads,
        dim=c.hidden_size,
        head_dim=head_dim,
        hidden=c.intermediate_size,
        max_positions=c.max_position_embeddings,
        norm_eps=c.rms_norm_eps,
        activation="silu",
        tie_embeddings=bool(getattr(c, "tie_word_embeddings", False)),
        attn_bias=bool(getattr(c, "attention_bias", False)),
        mlp_bias=bool(getattr(c, "mlp_bias", False)),
        rope=tuple(sorted((k, v) for k, v in rope.items() if not isinstance(v, list | dict))),
    )


def _rope_parameters(c) -> dict:
    """RoPE settings across transformers versions: `rope_parameters` (5.x) or `rope_theta` + `rope_scaling`."""
    rope = dict(getattr(c, "rope_parameters", None) or {})
    if not rope:
        rope = dict(getattr(c, "rope_scaling", None) or {})
        rope.setdefault("rope_theta", getattr(c, "rope_theta", 10000.0))
    if "type" in rope and "rope_type" not in rope:
        rope["rope_type"] = rope.pop("type")
    rope.setdefault("rope_type", "default")
    return rope
