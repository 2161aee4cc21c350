"""The `.okm` package: one checksummed file holding a model's config, weights and tokenizer.

See docs/okm.md for the byte layout. `open_checkpoint` reads an `.okm`, a
Hugging Face directory or a run directory; `export_model` writes `.okm` or a
Hugging Face directory.
"""

from okto.package.format import FORMAT_VERSION, Package, PackageError
from okto.package.sources import Checkpoint, export_hf, export_model, export_okm, open_checkpoint

__all__ = [
    "FORMAT_VERSION",
    "Checkpoint",
    "Package",
    "PackageError",
    "export_hf",
    "export_model",
    "export_okm",
    "open_checkpoint",
]
