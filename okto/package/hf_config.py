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
