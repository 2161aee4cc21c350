"""Generation: `load_model(path).generate(prompts)` on okto's engine (GPT-2 and Llama families)
or, for other architectures, Hugging Face `generate`.

Names load on first use, so that `okto.inference.settings` stays free of torch.
"""

from __future__ import annotations

from okto.lazy import lazy_exports

_EXPORTS = {
    "load_model": "okto.inference.generate",
    "Model": "okto.inference.generate",
    "Generation": "okto.inference.generate",
    "Stats": "okto.inference.generate",
    "Settings": "okto.inference.settings",
}

__all__ = list(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
