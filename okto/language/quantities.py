"""Typed quantities: a number with a unit, such as `120M`, `12GB`, `2s`, `90%`.

The lexer reads unquoted quantities; config fields also accept them quoted
(`"12GB"`), so both spellings give the same `Quantity`. Sizes use SI factors
(1GB = 10^9 bytes) and KiB..TiB binary ones, so `min_memory: 80GB` holds on a
GPU sold as "80GB".
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

Kind = Literal["count", "size", "duration", "percent"]

# unit -> (kind, factor to the kind's base unit: items, bytes, seconds, percent points)
UNITS: dict[str, tuple[Kind, float]] = {
    "": ("count", 1),
    "K": ("count", 1e3),
    "k": ("count", 1e3),
    "M": ("count", 1e6),
    "B": ("count", 1e9),
    "T": ("count", 1e12),
    "KB": ("size", 1e3),
    "MB": ("size", 1e6),
    "GB": ("size", 1e9),
    "TB": ("size", 1e12),
    "KiB": ("size", 2**10),
    "MiB": ("size", 2**20),
    "GiB": ("size", 2**30),
    "TiB": ("size", 2**40),
    "ms": ("duration", 1e-3),
    "s": ("duration", 1),
    "min": ("duration", 60),
    "h": ("duration", 3600),
    "%": ("percent", 1),
}

_QUANTITY = re.compile(
    r"\s*(?P<number>-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(?P<unit>[A-Za-z%]*)\s*"
)

UNIT_HELP = "counts K M B T, sizes KB MB GB TB (or KiB MiB GiB TiB), durations ms s min h, or %"


def unit_in_its_case(unit: str) -> str | None:
    """The unit `unit` spells in another case (`gb` -> `GB`, `b` -> `B`), for a hint: units
    are case-sensitive. None for `m`, which may mean million (`M`) or minutes (`min`)."""
    matches = [known for known in UNITS if known and known.lower() == unit.lower()]
    return matches[0] if len(matches) == 1 and unit != "m" else None


@dataclass(frozen=True)
class Quantity:
    """A number with a unit. `base` is the value in the kind's base unit."""

    value: int | float
    unit: str

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            meant = unit_in_its_case(self.unit)
            use = (
                f"units are case-sensitive, write {self.value}{meant}"
                if meant
                else f"use {UNIT_HELP}"
            )
            raise ValueError(f"unknown unit {self.unit!r}: {use}")

    @classmethod
    def parse(cls, text: str) -> Quantity:
        """Read `"12GB"`, `"90%"`, `"120M"`; raise ValueError for anything else."""
        match = _QUANTITY.fullmatch(text)
        if match is None:
            raise ValueError(f"{text!r} is not a quantity (a number and a unit, like 12GB)")
        number = match["number"]
        value = float(number) if any(c in number for c in ".eE") else int(number)
        return cls(value, match["unit"])

    @property
    def kind(self) -> Kind:
        return UNITS[self.unit][0]

    @property
    def base(self) -> float:
        """Items for counts, bytes for sizes, seconds for durations, percent points."""
        return self.value * UNITS[self.unit][1]

    @property
    def fraction(self) -> float:
        """A percentage as a fraction: 90% -> 0.9."""
        return self.base / 100

    def __str__(self) -> str:
        return f"{self.value}{self.unit}"


def _coerce(kind: Kind, bare_numbers: bool):
    """A pydantic before-validator accepting a Quantity, its text, or (when
    `bare_numbers`) a plain number taken in the kind's base unit."""

    def validate(value: object) -> Quantity:
        if isinstance(value, bool):
            raise ValueError(f"expected a {kind}, got a boolean")
        if isinstance(value, int | float):
            if not bare_numbers:
                raise ValueError(f"a {kind} needs a unit, like {EXAMPLES[kind]}")
            return Quantity(value, "" if kind == "count" else "%")
        if isinstance(value, str):
            written, value = value.strip(), Quantity.parse(value)
            if not math.isfinite(value.value):  # as the parser says of an unquoted 1e400GB
                raise ValueError(f"{written} is out of range: numbers go up to about 1.8e308")
        if not isinstance(value, Quantity):
            raise ValueError(f"expected a {kind}, like {EXAMPLES[kind]}")
        if value.kind != kind:
            raise ValueError(f"expected a {kind}, like {EXAMPLES[kind]}; {value} is a {value.kind}")
        if value.value < 0 and kind in ("count", "size"):
            raise ValueError(f"a {kind} cannot be negative, got {value}")
        return value

    return validate


EXAMPLES: dict[Kind, str] = {
    "count": "120M",
    "size": "12GB",
    "duration": "500ms",
    "percent": "90%",
}
"""A quantity of each kind, for messages that say what was expected."""


def _field_type(kind: Kind, bare_numbers: bool):
    pattern = {
        "count": r"^-?[0-9.eE+-]+[KkMBT]?$",
        "size": r"^-?[0-9.eE+-]+(KB|MB|GB|TB|KiB|MiB|GiB|TiB)$",
        "percent": r"^-?[0-9.eE+-]+%$",
    }[kind]
    text = {"type": "string", "pattern": pattern}
    schema = {"anyOf": [text, {"type": "number"}]} if bare_numbers else text
    return Annotated[
        Quantity,
        BeforeValidator(_coerce(kind, bare_numbers)),
        PlainSerializer(str, return_type=str),
        WithJsonSchema({**schema, "description": f"a {kind}, like {EXAMPLES[kind]}"}),
    ]


Count = _field_type("count", bare_numbers=True)
"""A count such as `120M` or `7B`; a plain number is a count too."""

Size = _field_type("size", bare_numbers=False)
"""A size in bytes such as `12GB`; a plain number is rejected (which unit?)."""

Percent = _field_type("percent", bare_numbers=True)
"""A percentage such as `90%`; a plain number is read as percent points."""
