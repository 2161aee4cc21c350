"""The model types `MODEL { pretrained: false  architecture: ... }` can build:
every causal LM transformers builds from a config alone, that is each model
type of its `CONFIG_MAPPING` that `AutoModelForCausalLM` maps to a class.

`okto check` must not import torch, and importing any module of
`transformers.models.auto` does. `AutoModelForCausalLM`'s table of model types
is a literal in its module's source (checked on transformers 5.17 and 5.23), so
it is read from there with `ast`, without running the module; a causal LM
class always has its config class, so the table is the answer. Where the
source no longer has that form, the modules are imported and both mappings
consulted.

The table also holds models that are more than a text decoder: a config that
wraps the language model's (`text_config`: MLlama, Gemma 3, Qwen 3.5) or adds
another modality's encoder (vision, audio). okto trains on text alone, and
MODEL.config's values would shape the outer config, not the language model:
MLlama's new model had Llama 3.2 Vision's language model whatever MODEL.config
said. `okto check` refuses them, reading the config class's `sub_configs` from
its source the same way.
"""

from __future__ import annotations

import ast
import difflib
import functools
import importlib.util
from pathlib import Path

_MODULE = "modeling_auto"
_TABLE = "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"
_NAMES = "auto_mappings"  # model type -> config class, and -> module where it is not the type
_CONFIG_TABLE, _MODULE_TABLE = "CONFIG_MAPPING_NAMES", "SPECIAL_MODEL_TYPE_TO_MODULE_NAME"
# Sub-configs naming a wrapped language model or another modality's encoder.
_NOT_TEXT_ONLY = ("text", "vision", "audio", "image", "speech", "vq")


@functools.cache
def causal_lms() -> dict[str, str]:
    """Every model type a new causal LM can be built for, with its class name
    (`llama` -> `LlamaForCausalLM`)."""
    table = _table(_MODULE, _TABLE)
    if table is not None:
        return table
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return {
        model_type: class_name
        for model_type, class_name in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items()
        if model_type in CONFIG_MAPPING_NAMES
    }


def unknown_architecture(name: str) -> str:
    """Why `name` names no causal LM, and what it may have meant."""
    head = f"cannot build a new '{name}' model: transformers has no causal LM of that model type"
    by_class = {c.lower(): t for t, c in causal_lms().items() if isinstance(c, str)}
    if name.lower() in by_class:
        return f'{head}; {name} is a class: write its model type, "{by_class[name.lower()]}"'
    close = difflib.get_close_matches(name.lower(), sorted(causal_lms()), n=10, cutoff=0.6)
    close = [t for t in close if not_text_only(t) is None][:3]  # never suggest a refused type
    if close:
        return f"{head} (did you mean {_either(close)}?)"
    return f"{head}; write one of AutoModelForCausalLM's, like gpt2, llama, qwen3 or mistral"


def not_text_only(name: str) -> str | None:
    """Why a new `name` model (a causal LM type) cannot be trained on text alone, naming
    text-only types to write instead; None when it can."""
    parts = [key for key in _sub_configs(name) if any(k in key for k in _NOT_TEXT_ONLY)]
    if not parts:
        return None
    text_only = f"{name}_text"
    instead = (
        f'"{text_only}" (its language model alone), or another text-only type'
        if text_only in causal_lms()
        else "a text-only type"
    )
    return (
        f"'{name}' is a multimodal model (its config holds {', '.join(parts)}), and okto "
        f"trains text-only decoders from scratch: write {instead} such as llama, qwen3 or gpt2"
    )


@functools.cache
def _sub_configs(model_type: str) -> tuple[str, ...]:
    """The names of `model_type`'s config class's sub-configs (`sub_configs_defaults`, or
    `sub_configs` before transformers 5.2x), as its source writes them; none where the
    source does not have that form."""
    config_class = (_table(_NAMES, _CONFIG_TABLE) or {}).get(model_type)
    module = (_table(_NAMES, _MODULE_TABLE) or {}).get(model_type, model_type.replace("-", "_"))
    path = _source_of(f"configuration_{module}", folder=module)
    if config_class is None or path is None:
        return ()
    classes = {
        node.name: node
        for node in ast.parse(path.read_text(encoding="utf-8")).body
        if isinstance(node, ast.ClassDef)
    }
    while config_class in classes:  # up its bases defined in the same file
        node = classes[config_class]
        for statement in node.body:
            target = statement.targets[0] if isinstance(statement, ast.Assign) else None
            if isinstance(statement, ast.AnnAssign):
                target = statement.target
            if getattr(target, "id", None) in ("sub_configs", "sub_configs_defaults") and (
                isinstance(statement.value, ast.Dict)
            ):
                keys = statement.value.keys
                return tuple(k.value for k in keys if isinstance(k, ast.Constant))
        config_class = getattr(node.bases[0], "id", None) if node.bases else None
    return ()


def _either(names: list[str]) -> str:
    quoted = [f"'{n}'" for n in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def _source_of(module: str, folder: str = "auto") -> Path | None:
    """transformers/models/<folder>/<module>.py, found without running the package."""
    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0], "models", folder, f"{module}.py")
    return path if path.is_file() else None


@functools.cache
def _table(module: str, name: str) -> dict[str, str] | None:
    return _read_table(_source_of(module), name)


def _read_table(path: Path | None, name: str) -> dict[str, str] | None:
    """The pairs of `name = OrderedDict([("key", "value"), ...])` in `path`, or None."""
    if path is None:
        return None
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if (
            isinstance(node, ast.Assign)
            and [getattr(t, "id", None) for t in node.targets] == [name]
            and isinstance(node.value, ast.Call)
            and len(node.value.args) == 1
        ):
            try:
                return dict(ast.literal_eval(node.value.args[0]))
            except (ValueError, TypeError):
                return None
    return None
