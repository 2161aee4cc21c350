"""The JSON Schema of the language, for editors (`okto schema`).

It is pydantic's schema of `OktoConfig` (canonical names, types, enums,
defaults, descriptions), with every accepted alias added as a property of its
own: `DATASET` and `DATA` at the top, `val` next to `validation`, and so on.
A `.okt` file maps onto it block by block.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from okto.language.config import OktoConfig
from okto.language.resolve import list_item, model_in

DIALECT = "https://json-schema.org/draft/2020-12/schema"


def json_schema() -> dict[str, Any]:
    schema = OktoConfig.model_json_schema(mode="validation")
    definitions = schema.get("$defs", {})
    for model in _models(OktoConfig):
        target = schema if model is OktoConfig else definitions.get(model.__name__)
        if target is not None:
            _add_aliases(model, target["properties"])
    return {"$schema": DIALECT, **schema, "title": "OktoScript (.okt)"}


def _models(model: type[BaseModel]) -> list[type[BaseModel]]:
    """`model` and every model its fields hold, each once."""
    found = [model]
    for info in model.model_fields.values():
        inner = model_in(info.annotation) or model_in(list_item(info.annotation))
        if inner is not None and inner not in found:
            found += [m for m in _models(inner) if m not in found]
    return found


def _add_aliases(model: type[BaseModel], properties: dict[str, Any]) -> None:
    for name, info in model.model_fields.items():
        if info.validation_alias is None:
            continue
        for alias in info.validation_alias.choices:
            if alias != name and alias not in properties:
                properties[alias] = {**properties[name], "description": f"Alias of `{name}`."}
