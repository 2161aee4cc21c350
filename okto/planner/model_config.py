"""The model's transformers config, found without building the model or downloading
anything, so `okto plan` is quick: MODEL.architecture with its `config {}`, a
local checkpoint (folder, run folder or .okm), or a hub name already cached.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from okto.errors import OktoError
from okto.language.config import ModelConfig
from okto.language.paths import local_path
from okto.package.hf_config import DERIVED, overridden, transformers_config


def model_config(model: ModelConfig, base_dir: Path | None = None) -> tuple[Any | None, str]:
    """(transformers config, where it came from), or (None, why there is none). A relative
    MODEL.base is looked for in `base_dir` (the .okt file's folder), then in the working
    directory, as okto train looks for it."""
    values, source = _base_values(model.base, base_dir) if model.base else (None, "")
    if model.builds_from_architecture:
        if values and values.get("model_type") != model.architecture:
            values = {k: v for k, v in values.items() if k not in DERIVED}  # derived anew
        values = {**(values or {}), "model_type": model.architecture}
        source = f"MODEL.architecture {model.architecture}" + (f" over {source}" if source else "")
    if values is None:
        return None, source or "MODEL names no base and no architecture"
    values = overridden(values, model.config)
    model_type = values.pop("model_type", None)
    if model_type is None:
        return None, f"{source}: the config names no model_type"
    return transformers_config(model_type, values, "MODEL.config"), source


def check_new_model(model: ModelConfig, config: Any | None) -> None:
    """A model built from MODEL.architecture (`config`, model_config's) is built once on the
    meta device (no memory, no weights), so a config its class refuses is a UsageError
    before any data is read, and `okto plan` does not pass what `okto train` refuses."""
    if model.builds_from_architecture and config is not None:
        from okto.training.models import new_model

        new_model(config, device="meta")


def _base_values(base: str, base_dir: Path | None) -> tuple[dict | None, str]:
    local = local_path(base, base_dir)
    if local is not None:
        from okto.package import open_checkpoint

        try:
            return open_checkpoint(local).config, f"MODEL.base {base}"
        except OktoError as error:
            return None, str(error)
    from huggingface_hub import try_to_load_from_cache

    from okto.training.hub import missing_path  # as okto train tells a path from a hub name

    missing = missing_path(base, base_dir)
    if missing is not None:
        return None, missing
    cached = try_to_load_from_cache(base, "config.json")
    if isinstance(cached, str):
        return json.loads(Path(cached).read_text()), f"MODEL.base {base} (hub cache)"
    return None, f"MODEL.base {base!r} is not in the local hub cache (okto train downloads it)"
