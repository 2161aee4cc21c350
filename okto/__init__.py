"""okto: a DSL-driven engine that trains and runs language models fast.

`import okto` stays light (no torch, not even the language front end): each public
name below, `okto.kernels` included, is imported on first use.
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
    "generate": "okto.inference.generate",
    "plan": "okto.planner.file_plan",
    "train": "okto.process_state",
    "export_model": "okto.package",
    "kernels": "okto.kernels",
}

__all__ = ["__version__", *_EXPORTS]

__getattr__ = lazy_exports(__name__, _EXPORTS)
