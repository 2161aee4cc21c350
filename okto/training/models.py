"""The model a run trains: a local Hugging Face folder, an `.okm` package, a hub name, or a new one.

`locate` finds where MODEL.base points before anything heavy happens (so a
typo fails in a second, with a message), `build` makes the model once the
tokenizer is known (a new model's vocabulary is the tokenizer's).

MODEL.base is tried as a path relative to the `.okt` file, then to the
working directory, then as a hub name, unless no hub id can look like it
(`hub.missing_path`). A run folder (one with `final/`)
stands for its final model. The weights are in the plan's `weights` dtype:
MODEL.precision when set, else fp32 (autocast supplies the mixed precision).
"""

from __future__ import annotations

import contextlib
import difflib
from dataclasses import dataclass
from pathlib import Path

from okto.errors import UsageError
from okto.language.paths import local_path
from okto.training.hub import HubUnavailable, hub_snapshot, missing_path

SIZE_TOLERANCE = 0.10
# The weight files transformers loads a folder from: one file, or an index naming the shards.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


@dataclass
class ModelSource:
    """Where the config, the weights and the tokenizer come from."""

    where: str  # in words, for the plan and the summary
    name: str | None  # MODEL.base as written
    config: object  # a transformers PretrainedConfig
    folder: Path | None = None  # a Hugging Face folder holding the weights
    package: object | None = None  # an okto.package Checkpoint (.okm) holding them
    tokenizer_path: Path | None = None  # the model's own tokenizer, if it has one
    pretrained: bool = True
    # What a LoRA adapter names as its base: the hub name, or the absolute path of the local
    # folder or .okm (MODEL.base as written is relative to the .okt file, not to the adapter).
    reference: str | None = None

    @property
    def context_window(self) -> int | None:
        return getattr(self.config, "max_position_embeddings", None)


def locate(model_cfg, base_dir: Path, offline: bool, scratch: Path) -> ModelSource:
    """Resolve MODEL into a `ModelSource`; `scratch` is a folder for an `.okm`'s tokenizer files."""

    if model_cfg.base is None:
        config = _new_config(model_cfg.architecture, model_cfg.config)
        return ModelSource(f"new {model_cfg.architecture}", None, config, pretrained=False)
    try:
        source = _from_base(model_cfg.base, base_dir, offline, scratch)
    except HubUnavailable:
        if model_cfg.pretrained:
            raise
        return _shape_without_base(model_cfg, offline)
    if not model_cfg.pretrained:
        source.config = override(_retyped(source.config, model_cfg.architecture), model_cfg.config)
        source.where = f"new {source.config.model_type} shaped like {source.where}"
        source.folder = source.package = source.reference = None
        source.pretrained = False
    elif source.folder is not None:
        _check_weights(source.folder, model_cfg.base)
    return source


def _retyped(config, architecture: str | None):
    """The base's config as MODEL.architecture's type, when `pretrained: false` names another
    one (its values over the new type's defaults, as `okto plan` reads them)."""
    from transformers import AutoConfig

    from okto.package.hf_config import CONFIG_ERRORS, DERIVED, refused

    if architecture is None or architecture == config.model_type:
        return config
    values = {k: v for k, v in config.to_dict().items() if k != "model_type"}
    for derived in DERIVED:
        values.pop(derived, None)  # the new type derives its own
    try:
        return type(AutoConfig.for_model(architecture)).from_dict(values)
    except CONFIG_ERRORS as error:
        raise refused(architecture, error) from None


def _check_weights(folder: Path, base: str) -> None:
    """A pretrained folder holds the weights its config describes: every shard its index names,
    or one weight file (transformers' own error for a missing one is a traceback)."""
    import json

    for index in WEIGHT_INDEXES:
        if (folder / index).is_file():
            try:
                shards = set(json.loads((folder / index).read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError, AttributeError) as error:
                raise UsageError(
                    f"MODEL.base {base!r}: cannot read {folder / index} ({error})"
                ) from None
            absent = sorted(s for s in shards if not (folder / s).is_file())
            if absent:
                raise UsageError(
                    f"MODEL.base {base!r}: {folder} lacks {len(absent)} of the "
                    f"{len(shards)} weight shards {index} names ({', '.join(absent[:3])}"
                    f"{', ...' if len(absent) > 3 else ''}): copy or download them again"
                )
            return
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise UsageError(
            f"MODEL.base {base!r}: {folder} holds a config.json but no weights "
            "(model.safetensors, model-*.safetensors shards with model.safetensors.index.json, "
            "or pytorch_model.bin): copy the weights there, or write pretrained: false to "
            "train a new model of that shape"
        )


def _shape_without_base(model_cfg, offline: bool) -> ModelSource:
    """A new model when the hub base cannot be had: `pretrained: false` needs only its shape,
    which MODEL.architecture gives, or the base name itself when it is a model type (gpt2)."""
    from okto.language.architectures import causal_lms

    name = model_cfg.base
    known = name if name in causal_lms() else None
    architecture = model_cfg.architecture or known
    why = "offline" if offline else "the hub cannot be reached"
    if architecture is None:
        raise UsageError(
            f"MODEL.base {name!r} is not a local path and not in the local Hugging Face cache "
            f"({why}). With pretrained: false only its shape is needed: add architecture "
            '(and config { }) to MODEL, e.g. architecture: "llama" config { hidden_size: 512 }, '
            f"or download it once where there is network (`hf download {name}`)"
        )
    config = _new_config(architecture, model_cfg.config)
    where = f"new {architecture} ({name!r} is not in the cache, {why}: {architecture}'s shape)"
    return ModelSource(where, name, config, pretrained=False)


def _new_config(architecture: str | None, overrides: dict):
    """A fresh config of the model type MODEL.architecture names, made from MODEL.config's
    values (so the config class derives the rest, e.g. Qwen3's layer_types from its layer
    count), or a message naming the fix."""
    from transformers import AutoConfig

    from okto.package.hf_config import CONFIG_ERRORS, refused

    if architecture is None:
        raise UsageError(
            "MODEL names no model: give `base` (a checkpoint folder, an .okm file or a hub "
            'name) or `architecture` with `pretrained: false` (e.g. MODEL { architecture: "gpt2" '
            "pretrained: false })"
        )
    try:
        defaults = AutoConfig.for_model(architecture)
    except CONFIG_ERRORS as error:  # some types' own defaults fail their checks
        raise refused(architecture, error) from None
    return override(defaults, overrides)  # GPT-2's ids of 50256 leave a smaller vocabulary


def _from_base(base: str, base_dir: Path, offline: bool, scratch: Path) -> ModelSource:
    from transformers import AutoConfig

    path = local_path(base, base_dir)
    missing = missing_path(base, base_dir) if path is None else None
    if missing is not None:
        raise UsageError(missing)
    if path is None:
        folder, origin = hub_snapshot(base, offline)
        return ModelSource(
            f"{base} ({origin})",
            base,
            _config(folder),
            folder,
            tokenizer_path=folder,
            reference=base,
        )
    if path.is_file():
        from okto.package import open_checkpoint

        package = open_checkpoint(path)
        tokenizer = scratch / "tokenizer"
        tokenizer.mkdir(parents=True, exist_ok=True)
        for name, data in package.tokenizer_files.items():
            (tokenizer / name).write_bytes(data)
        config = dict(package.config)
        config_class = type(AutoConfig.for_model(config.pop("model_type")))
        return ModelSource(
            f"{path} (.okm)",
            base,
            config_class.from_dict(config),
            package=package,
            tokenizer_path=tokenizer if package.tokenizer_files else None,
            reference=str(path.resolve()),
        )
    if not (path / "config.json").is_file() and (path / "final" / "config.json").is_file():
        path = path / "final"
    if not (path / "config.json").is_file():
        raise UsageError(
            f"MODEL.base {base!r}: {path} is not a model folder (no config.json), "
            "an .okm file or a run folder (with final/)"
        )
    return ModelSource(
        str(path), base, _config(path), path, tokenizer_path=path, reference=str(path.resolve())
    )


def _config(folder: Path):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError) as error:
        raise UsageError(f"{folder}: cannot read its config.json ({error})") from None


def override(config, overrides: dict):
    """The config rebuilt with MODEL.config's values (so derived ones, like Llama's key-value
    heads and head size, follow), refusing names the architecture does not have."""
    from okto.package.hf_config import CONFIG_ERRORS, overridden, refused

    check_names(config, overrides)
    if not overrides:
        return config
    try:
        return type(config).from_dict(overridden(config.to_dict(), overrides))
    except CONFIG_ERRORS as error:
        raise refused(config.model_type, error) from None


def check_names(config, overrides: dict) -> None:
    for key in overrides:
        if not _has_setting(config, key):
            known = [k for k in config.to_dict() if not k.startswith("_")]
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UsageError(
                f"MODEL.config: a {config.model_type} model has no setting '{key}'{hint}"
            )


def _has_setting(config, key: str) -> bool:
    try:
        return hasattr(config, key)
    except RuntimeError:  # a value each layer has (Gemma 4's head_dim) refuses global reads
        return True


def build(source: ModelSource, model_cfg, tokenizer, max_length: int, dtype=None):
    """The model, on the CPU, in `dtype` (the plan's weights), else fp32."""
    import torch

    config = source.config
    if not source.pretrained:
        config.vocab_size = len(tokenizer)
        window_set = {"max_position_embeddings", "n_positions"} & set(model_cfg.config)
        if not window_set and hasattr(config, "max_position_embeddings"):
            config.max_position_embeddings = model_cfg.context_window or max_length
        eos = tokenizer.eos_token_id
        config.eos_token_id = eos
        config.bos_token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
        config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    _check_window(source, model_cfg.context_window, max_length)
    if not source.pretrained:
        model = new_model(config)
    elif source.folder is not None:
        model = _load_folder(source, config)
    else:
        model = _load_package(source, config)
    model = model.to(dtype or torch.float32)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    _for_training(model)
    model.name_or_path = source.reference  # transformers' "loaded from", for the adapter
    return model


def new_model(config, device: str | None = None):
    """A new model of `config` (on `device`: "meta" builds one with no memory, to check that
    its class takes the config before anything else runs). transformers' table of causal LMs
    holds decoders that need more than a config (MusicGen's, Whisper's with its own head
    rules), models needing packages this machine lacks, and classes that refuse a config
    (GPT-2's n_embd not a multiple of n_head): what the constructor raises is one line."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device(device) if device else contextlib.nullcontext():
            return AutoModelForCausalLM.from_config(config)
    except Exception as error:  # an arbitrary model class's constructor: anything but Ctrl-C
        detail = " ".join(str(error).split())
        raise UsageError(
            f"cannot build a new {config.model_type} model from MODEL.config "
            f"({type(error).__name__}: {detail}); pick another architecture or change the config"
        ) from None


def _check_window(source: ModelSource, asked: int | None, max_length: int) -> None:
    """The rows fit the model's position table, and MODEL.context_window agrees with it: a
    new model's table is that long, a pretrained one's cannot grow (a shorter
    context_window only shortens the rows)."""
    window = source.context_window
    if window is None:
        return
    if asked is not None and (asked > window or (asked < window and not source.pretrained)):
        where = "the base model has" if source.pretrained else "MODEL.config sets"
        raise UsageError(
            f"MODEL.context_window is {asked}, but {where} {window} positions: "
            + (f"use at most {window}" if source.pretrained else "set only one of them")
        )
    if max_length > window:
        raise UsageError(
            f"sequences of {max_length} tokens do not fit the model's context window of {window}: "
            "lower DATASET max_length"
        )


def _for_training(model) -> None:
    """Instance settings for the loop: the causal-LM loss named (transformers warns when a new
    model leaves it unset), and no padding check, which reads the batch back from the GPU on
    every forward to warn about padding that okto's rows keep at their ends, unattended by
    real tokens under the causal mask and ignored by the loss."""
    from transformers import PreTrainedModel

    model.loss_type = "ForCausalLM"
    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            module.warn_if_padding_and_no_attention_mask = _no_padding_check


def _no_padding_check(input_ids, attention_mask) -> None:
    return None


def _load_folder(source: ModelSource, config):
    """The model holding a folder's weights. transformers fills weights the files lack, or
    hold in another shape, with random ones and goes on: a pretrained run refuses that, as
    for an `.okm`."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    from okto.data.progress import quiet_transformers

    try:
        with quiet_transformers():  # okto's model line follows
            model, info = AutoModelForCausalLM.from_pretrained(
                str(source.folder),
                config=config,
                ignore_mismatched_sizes=True,  # reported below, in words
                output_loading_info=True,
            )
    except (OSError, SafetensorError) as error:  # an unreadable or truncated weight file
        raise UsageError(f"{source.where}: cannot read its weights ({error})") from None
    missing = sorted(info["missing_keys"])
    mismatched = sorted(name for name, *_ in info["mismatched_keys"])
    faults = [
        f"{what} {names[:3]}"
        for what, names in (("missing", missing), ("shaped otherwise", mismatched))
        if names
    ]
    if faults:
        raise UsageError(
            f"{source.where}: its weights do not fit its config.json ({', '.join(faults)})"
        )
    return model


def _load_package(source: ModelSource, config):
    """The model holding an `.okm`'s weights, through transformers' loader (which renames the
    keys a checkpoint stores where the model's differ: GPT-NeoX's head, MoE experts)."""
    import torch

    from okto.package.transformers_model import causal_lm

    try:
        model, missing, unexpected = causal_lm(config, source.package.tensors(), torch.float32)
    except ValueError as error:  # no causal-LM class, or weights shaped unlike the config
        raise UsageError(f"{source.where}: {error}") from None
    if missing or unexpected:
        raise UsageError(
            f"{source.where}: its weights do not fit a {config.model_type} model "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model


def parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def size_warning(model, hint) -> str | None:
    """A warning when MODEL.parameters differs from the built model by more than 10%."""
    if hint is None:
        return None
    expected, actual = float(hint.base), parameters(model)
    if abs(actual - expected) <= SIZE_TOLERANCE * expected:
        return None
    return (
        f"MODEL.parameters says {expected:,.0f}, the model has {actual:,} "
        f"({100 * (actual - expected) / expected:+.0f}%)"
    )
