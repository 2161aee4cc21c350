"""okto: a DSL-driven engine that trains and runs language models fast.

`import okto` stays light (no torch): the language front end loads eagerly,
everything that needs torch loads on first use.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Public name -> module that defines it. Resolved lazily by __getattr__.
_EXPORTS = {
    "parse": "okto.language",
    "load": "okto.language",
    "Program": "okto.language",
    "OktoError": "okto.errors",
    "load_model": "okto.inference",
    "train": "okto.training",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'okto' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
