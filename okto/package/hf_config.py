"""A transformers config made from plain values, or one line saying why transformers refuses it.

`okto plan`, `okto train` and `okto infer` all build configs from values a user
or a checkpoint gives; transformers refuses bad ones with ValueError, TypeError,
KeyError or (transformers 5) huggingface_hub's StrictDataclassError, and an
unknown model type with a message listing every type it knows. One helper, so
every command catches the same errors and says them the same way (exit code 2).
"""

from __future__ import annotations

from okto.errors import UsageError

try:  # transformers 5 checks config values as huggingface_hub strict dataclasses
    from huggingface_hub.errors import StrictDataclassError
except ImportError:  # an older huggingface_hub: configs check values with ValueError alone
    StrictDataclassError = ValueError

CONFIG_ERRORS = (ValueError, TypeError, KeyError, StrictDataclassError)
"""What a transformers config class raises for values it refuses."""


DERIVED = ("head_dim", "num_key_value_heads", "layer_types")
"""Config values transformers derives from others when a config is made."""


def overridden(values: dict, overrides: dict) -> dict:
    """`values` with `overrides` applied, and the values the base had derived from what
    changed derived again: a head size that was hidden / heads, as many key-value heads as
    heads (grouped-query counts are kept), and no per-layer list of the old layer count
    (the config makes a new one). Left alone, they contradict the new values, and a class
    default (Qwen2's 32 key-value heads) is no better."""
    new = {**values, **overrides}
    old_heads, heads = values.get("num_attention_heads"), new.get("num_attention_heads")
    if old_heads and heads:  # configs that name their heads so (GPT-2's n_head: no)
        size = values.get("hidden_size")
        if size is not None and values.get("head_dim") == size // old_heads:
            new["head_dim"] = new["hidden_size"] // heads
        if values.get("num_key_value_heads") == old_heads:
            new["num_key_value_heads"] = heads
    layer_types = new.get("layer_types")
    if layer_types is not None and len(layer_types) != new.get("num_hidden_layers"):
        del new["layer_types"]
    vocab = new.get("vocab_size")
    if isinstance(vocab, int) and vocab != values.get("vocab_size"):
        for name in SPECIAL_IDS:  # the base's ids past a smaller vocabulary (GPT-2's 50256)
            if isinstance(new.get(name), int) and new[name] >= vocab:
                new[name] = None  # a new model takes them from its tokenizer
    return {**new, **overrides}


SPECIAL_IDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")


def transformers_config(model_type: str, values: dict, source: str):
    """`AutoConfig.for_model(model_type, **values)`; a type this transformers lacks, or values
    it refuses, is a UsageError that starts with `source` (what gave the values)."""
    import transformers
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:  # transformers' own message lists hundreds of types
        raise UsageError(
            f"{source} names model type {model_type!r}, which transformers "
            f"{transformers.__version__} does not know (a newer transformers may)"
        )
    try:
        return AutoConfig.for_model(model_type, **values)
    except CONFIG_ERRORS as error:
        raise refused(model_type, error, source) from None


def refused(model_type: str, error: Exception, source: str = "MODEL.config") -> UsageError:
    """A config transformers cannot make from `source`'s values, said in one line: the
    commands stop on it with exit code 2, not a traceback."""
    cause = error.__cause__ if isinstance(error, StrictDataclassError) else None
    detail = " ".join(str(cause or error).split())
    return UsageError(f"{source}: transformers cannot make a {model_type} config from it: {detail}")
