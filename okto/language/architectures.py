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
"""

from __future__ import annotations

import ast
import difflib
import functools
import importlib.util
from pathlib import Path

_MODULE = "modeling_auto"
_TABLE = "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"


@functools.cache
def causal_lms() -> dict[str, str]:
    """Every model type a new causal LM can be built for, with its class name
    (`llama` -> `LlamaForCausalLM`)."""
    table = _read_table(_source_of(_MODULE), _TABLE)
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
    close = difflib.get_close_matches(name.lower(), sorted(causal_lms()), n=3, cutoff=0.6)
    if close:
        return f"{head} (did you mean {_either(close)}?)"
    return f"{head}; write one of AutoModelForCausalLM's, like gpt2, llama, qwen3 or mistral"


def _either(names: list[str]) -> str:
    quoted = [f"'{n}'" for n in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def _source_of(module: str) -> Path | None:
    spec = importlib.util.find_spec("transformers")  # finds the package without running it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0], "models", "auto", f"{module}.py")
    return path if path.is_file() else None


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
