"""The model families the planner patches, and `describe`, which reads a model's facts.

A model is "supported" when it is the family's causal-LM class itself (an
instance), or, planned from a config, when its model_type is a family's: okto
trains causal LMs, so a config stands for the family's LM class.
"""

from __future__ import annotations

from typing import Any

from okto.errors import UsageError
from okto.planner.architecture import Architecture, ModelFacts, read_facts
from okto.planner.gpt2 import GPT2
from okto.planner.llama import LLAMA

ARCHITECTURES: dict[str, Architecture] = {a.model_type: a for a in (GPT2, LLAMA)}
SUPPORTED = "GPT-2 and Llama"


def describe(model: Any) -> ModelFacts:
    """Facts of an `nn.Module` (a transformers model), a `PretrainedConfig` or a config dict."""
    from transformers import AutoConfig, PretrainedConfig

    if isinstance(model, dict):
        values = dict(model)
        kind = values.pop("model_type", None)
        try:
            model = AutoConfig.for_model(kind, **values)
        except ValueError:
            raise UsageError(
                f"the model's config dict has model_type {kind!r}, which names no transformers "
                "model type"
            ) from None
    config = getattr(model, "config", None)
    if config is None:  # a config itself, or a module without one (an unknown architecture)
        from torch import nn

        if not isinstance(model, PretrainedConfig | nn.Module):
            # A hub name (a str) read as an unknown architecture: a silent all-native plan
            raise UsageError(
                f"the model to plan for is of type {type(model).__name__}; pass an nn.Module, a "
                "transformers config or a config dict (okto.plan reads MODEL from a file)"
            )
        arch = ARCHITECTURES.get(getattr(model, "model_type", None))
        return read_facts(model, None, arch is not None, None)
    arch = ARCHITECTURES.get(getattr(config, "model_type", None))
    class_name = type(model).__name__
    params = next(model.parameters(), None)
    dtype = str(params.dtype).removeprefix("torch.") if params is not None else None
    supported = arch is not None and class_name == arch.lm_class
    return read_facts(config, class_name, supported, dtype)
