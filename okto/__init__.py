"""okto: a DSL-driven engine that trains and runs language models fast.

`import okto` stays light (no torch): the language front end loads eagerly,
everything that needs torch loads on first use.
"""

from __future__ import annotations

from okto.lazy import lazy_exports

__version__ = "0.1.0"

# Public name -> module that defines it, imported on first use.
_EXPORTS = {
    "parse": "okto.language",
    "load": "okto.language",
    "Program": "okto.language",
    "OktoError": "okto.errors",
    "load_model": "okto.inference",
    "train": "okto.training",
}

__all__ = ["__version__", *_EXPORTS]

__getattr__ = lazy_exports(__name__, _EXPORTS)
