"""What the planner knows about a model family, and the facts it reads off one model.

An `Architecture` names the causal-LM class the planner patches, says in words
what okto runs for each layer kind, and carries the function that patches an
instance. `ModelFacts` are the few numbers the kernels care about (head dim,
attention dropout, activation, parameter dtype), read from a module or a
config without building anything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ModelFacts:
    architecture: str  # the config's model_type
    class_name: str | None  # the module's class; None when planned from a config
    supported: bool  # the planner has patches for it
    head_dim: int | None
    attention_dropout: float
    activation: str | None
    dtype: str | None  # the parameters' dtype, when a module was given

    @property
    def name(self) -> str:
        return f"{self.class_name} ({self.architecture})" if self.class_name else self.architecture

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Architecture:
    """A model family the planner patches: `patch(model, choices, patches)` installs
    the family's own forwards; attention, the LM head + loss and `nn.Linear` GEMMs
    are shared by every family and installed by the caller."""

    model_type: str
    lm_class: str
    okto: Mapping[str, str]  # layer kind -> what okto runs, in words
    gelu: Mapping[str, str]  # activation name -> okto gelu approximation; empty: none fused
    mlp_in: str | None  # the GEMM whose epilogue takes the activation
    patch: Callable[..., None]
    # Under OPTIMIZE.compile, auto keeps the norm on okto (each residual add inside it)
    # rather than on inductor's fusion: only where that measured faster.
    compiled_norms: bool = False


def _setting(config: Any, name: str):
    """`config.name`, or None. A setting that varies by layer (Gemma 4's head_dim) raises on
    the config as a whole; the largest layer's value stands for it (the kernels' limits are
    upper bounds)."""
    try:
        return getattr(config, name, None)
    except RuntimeError:  # transformers' AmbiguousGlobalPerLayerAttributeError
        values = [getattr(layer, name, None) for layer in getattr(config, "per_layer_config", [])]
        return max((v for v in values if v is not None), default=None)


def read_facts(config: Any, class_name: str | None, supported: bool, dtype: str | None):
    """ModelFacts from a transformers config (GPT-2 and Llama spell things differently)."""
    heads = _setting(config, "num_attention_heads")
    hidden = _setting(config, "hidden_size")
    head_dim = _setting(config, "head_dim") or (hidden // heads if heads and hidden else None)
    dropout = next(
        (
            getattr(config, name)
            for name in ("attention_dropout", "attn_pdrop", "attention_probs_dropout_prob")
            if getattr(config, name, None) is not None
        ),
        0.0,
    )
    activation = getattr(config, "hidden_act", None) or getattr(config, "activation_function", None)
    return ModelFacts(
        architecture=getattr(config, "model_type", None) or "unknown",
        class_name=class_name,
        supported=supported,
        head_dim=head_dim,
        attention_dropout=float(dropout),
        activation=activation if isinstance(activation, str) else None,
        dtype=dtype,
    )
