"""Field types shared by the block models: case-insensitive choices, devices,
precisions, and the markers that drive the resolver and the docs.

Choices are `Literal`s so that consumers compare plain strings
(`config.train.optimizer == "adamw"`); a before-validator folds case and maps
spelling variants (`float16` -> `fp16`) onto the canonical value.
"""

from __future__ import annotations

import re
import types
import typing
from typing import Annotated, Any, Literal

import annotated_types
from pydantic import (
    AfterValidator,
    AliasChoices,
    BeforeValidator,
    ValidationInfo,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from okto.language.quantities import Quantity


def choice(*values: str, variants: dict[str, str] | None = None):
    """A `Literal[values]` that also accepts upper case and `variants`."""
    variants = variants or {}

    def normalise(value: object) -> object:
        if isinstance(value, str):
            folded = value.strip().lower()
            return variants.get(folded, folded)
        return value

    return Annotated[Literal[values], BeforeValidator(normalise)]


def aliases(*names: str) -> AliasChoices:
    """The canonical field name first, then the other accepted spellings."""
    return AliasChoices(*names)


def one_or_many(value: object) -> object:
    """Let a single value stand for a one-element list: `format: "okm"`."""
    return [value] if isinstance(value, str | int | float) else value


def distinct(values: list) -> list:
    """A list that names something at least once and nothing twice (`format: ["okm", "okm"]`
    would write one file two times; `[]` would quietly do nothing)."""
    if not values:
        raise ValueError("the list is empty: name at least one, or leave the field out")
    repeated = sorted({v for v in values if values.count(v) > 1}, key=values.index)
    if repeated:
        raise ValueError(f"{', '.join(repr(v) for v in repeated)} is listed more than once")
    return values


_ESCAPED = {"\n": "a line break (\\n)", "\t": "a tab (\\t)", "\r": "a return (\\r)"}


def named(value: str, info: ValidationInfo) -> str:
    """A string that names something (a path, a record field, a model) cannot be blank:
    `train: ""` read the .okt file's whole folder, run outputs included, as data. Nor can
    it hold a control character: "C:\\new\\table.jsonl" is a Windows path whose \\n and
    \\t were read as a line break and a tab."""
    if not value.strip():
        raise ValueError(f"{info.field_name} is empty: name something, or leave the field out")
    control = next((c for c in value if ord(c) < 32), None)
    if control is not None:
        what = _ESCAPED.get(control, f"the control character U+{ord(control):04X}")
        raise ValueError(
            f"{info.field_name} holds {what}; in a Windows path write \\\\ or / between folders"
        )
    return value


Name = Annotated[str, AfterValidator(named)]
"""A path or another name: a string that is not blank and holds no control character."""


NO_EFFECT = {"no_effect": True}
"""`json_schema_extra` of fields accepted for compatibility with other
OktoScript tools but ignored here: setting one is a warning."""


Precision = choice(
    "auto",
    "fp32",
    "fp16",
    "bf16",
    variants={
        "float32": "fp32",
        "float": "fp32",
        "float16": "fp16",
        "half": "fp16",
        "bfloat16": "bf16",
    },
)

_DEVICE = re.compile(r"auto|cpu|gpu|cuda(:\d+)?")


def _device(value: object) -> object:
    if isinstance(value, str):
        folded = value.strip().lower()
        if _DEVICE.fullmatch(folded):
            return folded
        raise ValueError("expected auto, cpu, gpu, cuda or cuda:N (a GPU index)")
    return value


Device = Annotated[
    str,
    BeforeValidator(_device),
    WithJsonSchema({"type": "string", "pattern": "^(auto|cpu|gpu|cuda(:[0-9]+)?)$"}),
]


def _quantity(value: object) -> object:
    """A quoted quantity (`"10K"`, `"30%"`) as a Quantity; anything else as it is, for
    pydantic to say what the field expected."""
    if isinstance(value, str):
        try:
            return Quantity.parse(value)
        except ValueError:
            return value
    return value


def _not_a_bool(value: object, kind: str) -> None:
    """pydantic reads true as 1 in a number field: `learning_rate: true` was a rate of 1."""
    if isinstance(value, bool):
        raise PydanticCustomError(kind, "a boolean is not a number")


def _number(value: object) -> object:
    _not_a_bool(value, "float_type")
    return value


def _count_as_int(value: object) -> object:
    """Let an integer field take a count, quoted or not: `max_steps: 10K` and
    `max_steps: "10K"` are 10000."""
    _not_a_bool(value, "int_type")
    quantity = _quantity(value)
    counted = isinstance(quantity, Quantity) and quantity.kind == "count"
    if counted and float(quantity.base).is_integer():
        return int(quantity.base)
    return value


def _percent_as_number(value: object) -> object:
    """Let a number counted in percent take the sign, quoted or not: `weight: 30%` is 30."""
    _not_a_bool(value, "float_type")
    quantity = _quantity(value)
    if isinstance(quantity, Quantity) and quantity.kind == "percent":
        return quantity.value
    return value


Number = Annotated[float, BeforeValidator(_number)]
"""A number field: an integer or a decimal, not a boolean."""

PercentNumber = Annotated[float, BeforeValidator(_percent_as_number)]
"""A plain number that means percent (mix weights): `30` and `30%` alike."""

# Integers that also take a count quantity (`10K`, `1.5M`). The bound comes
# before the validator so that the JSON Schema states it as `minimum`.
Integer = Annotated[int, BeforeValidator(_count_as_int)]
NonNegativeInt = Annotated[int, annotated_types.Ge(0), BeforeValidator(_count_as_int)]
PositiveInt = Annotated[int, annotated_types.Ge(1), BeforeValidator(_count_as_int)]


def unwrap(annotation: Any) -> list[Any]:
    """The types an annotation admits: Optional and Annotated taken apart."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [t for arg in typing.get_args(annotation) for t in unwrap(arg)]
    return [annotation]
