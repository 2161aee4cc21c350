"""The model's transformers config, found without building the model or downloading
anything, so `okto plan` is quick: MODEL.architecture with its `config {}`, a
local checkpoint (folder, run folder or .okm), or a hub name already cached.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

from okto.errors import OktoError, UsageError
from okto.language.config import ModelConfig
from okto.language.paths import local_path
from okto.package.hf_config import DERIVED, transformers_config


def model_config(model: ModelConfig, base_dir: Path | None = None) -> tuple[Any | None, str]:
    """(transformers config, where it came from), or (None, why there is none). A relative
    MODEL.base is looked for in `base_dir` (the .okt file's folder), then in the working
    directory, as okto train looks for it. MODEL.config names the config class's settings
    (okto train's rule), else a UsageError."""
    values, source = _model_values(model, base_dir)
    if values is None:
        return None, source
    if values.get("model_type") is None:
        return None, f"{source}: the config names no model_type"
    from okto.training.models import override  # okto train's rule and words

    return override(_unchanged_config(values), _overrides(model)), source


def check_new_model(model: ModelConfig, config: Any | None) -> None:
    """A model built from MODEL.architecture (`config`, model_config's) is built once on the
    meta device (no memory, no weights), so a config its class refuses is a UsageError
    before any data is read, and `okto plan` does not pass what `okto train` refuses."""
    if model.builds_from_architecture and config is not None:
        from okto.training.models import new_model

        new_model(config, device="meta")


def check_adapter(model: ModelConfig, config: Any | None) -> str | None:
    """ADAPTER's target_modules asked of the model built on the meta device, as okto train
    asks them of the real one: a UsageError where none matches a layer; okto train's warning
    where some match nothing while others match, else None."""
    if model.adapter is None or config is None:
        return None
    from okto.training.lora import target_layers, unmatched_warning
    from okto.training.models import new_model

    layers = target_layers(new_model(config, device="meta"), model.adapter)
    return unmatched_warning(model.adapter, list(layers))


def check_findings(model: ModelConfig, base_dir: Path | None) -> list[tuple[str, str, str]]:
    """(dotted field, severity, message) for `okto check`: MODEL.config keys the model's
    config class lacks and ADAPTER target_modules that match no layer, in okto plan's and
    okto train's words, where the model's config is known offline. A name that is a word of
    transformers' source for the model type is taken as known, so a valid file imports no
    torch; the others are asked of transformers (and the model on the meta device)."""
    values, _ = _model_values(model, base_dir)
    model_type = (values or {}).get("model_type")
    if model_type is None:
        return []
    overrides = _overrides(model)
    suspects = [k for k in overrides if k not in values and not _named(model_type, k, CONFIG)]
    targets = (model.adapter.target_modules if model.adapter else None) or []
    if not suspects and all(_named(model_type, t.rsplit(".", 1)[-1], MODEL) for t in targets):
        return []
    findings = []
    if suspects:
        try:
            config = _unchanged_config(values)
        except UsageError:
            return []  # the base's own values are refused: okto plan says so
        for key in suspects:
            try:
                _check_settings(config, {key: overrides[key]})
            except UsageError as error:
                findings.append((f"model.config.{key}", "error", str(error)))
    if findings or not targets:
        return findings
    try:
        warning = check_adapter(model, model_config(model, base_dir)[0])
    except UsageError as error:
        return [("model.adapter.target_modules", "error", str(error))]
    return [("model.adapter.target_modules", "warning", warning)] if warning else []


def _model_values(model: ModelConfig, base_dir: Path | None) -> tuple[dict | None, str]:
    """The config values MODEL.base and MODEL.architecture give, before MODEL.config."""
    values, source = _base_values(model.base, base_dir) if model.base else (None, "")
    if model.builds_from_architecture:
        if values and values.get("model_type") != model.architecture:
            values = {k: v for k, v in values.items() if k not in DERIVED}  # derived anew
        values = {**(values or {}), "model_type": model.architecture}
        source = f"MODEL.architecture {model.architecture}" + (f" over {source}" if source else "")
    if values is None:
        return None, source or "MODEL names no base and no architecture"
    return values, source


def _overrides(model: ModelConfig) -> dict:
    """MODEL.config where okto train applies it: to a new model, not a pretrained base's."""
    return {} if model.base is not None and model.pretrained else model.config


def _unchanged_config(values: dict):
    """The config `values` (with their model_type) make, which MODEL.config then changes."""
    values = dict(values)
    return transformers_config(values.pop("model_type"), values, "MODEL.config")


def _check_settings(config, overrides: dict) -> None:
    from okto.training.models import check_names  # okto train's rule and words

    check_names(config, overrides)


CONFIG, MODEL = "configuration", "modeling"


@functools.cache
def _source_words(model_type: str, kind: str) -> frozenset[str]:
    """The words of transformers' `kind` source file for `model_type` (its config's along
    with PretrainedConfig's), read as text: no import of transformers, hence of torch."""
    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        return frozenset()
    root = Path(spec.submodule_search_locations[0])
    module = model_type.replace("-", "_")
    files = [root / "models" / module / f"{kind}_{module}.py"]
    if kind == CONFIG:
        files.append(root / "configuration_utils.py")
    text = "".join(f.read_text(encoding="utf-8") for f in files if f.is_file())
    return frozenset(re.findall(r"\w+", text))


def _named(model_type: str, name: str, kind: str) -> bool:
    return name in _source_words(model_type, kind)


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
