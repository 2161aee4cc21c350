"""The reference parts of `docs/language.md`, generated from the models.

The page mixes prose with generated sections between `<!-- generated:NAME -->`
and `<!-- end generated -->`; this module rewrites only those, so the tables
of blocks, fields, types, defaults, units, metrics and events cannot drift
from the code. A test asserts the committed page is up to date.

    python -m okto.language.docs          # rewrite docs/language.md
    python -m okto.language.docs --check  # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from okto.language.config import (
    BLOCK_KEYWORDS,
    HEADER_KEYWORDS,
    NOT_EXECUTED_BLOCKS,
    OktoConfig,
    ProjectConfig,
)
from okto.language.control import EVENT_HELP, LIVE_FIELDS, METRICS
from okto.language.control_builder import whole_number
from okto.language.fieldtypes import Device
from okto.language.quantities import UNITS, Count, Percent, Quantity, Size
from okto.language.resolve import list_item, model_in

PAGE = Path(__file__).resolve().parents[2] / "docs" / "language.md"
_SECTION = re.compile(
    r"(<!-- generated:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.DOTALL
)


def update(page: str) -> str:
    """`page` with every generated section rendered afresh."""
    sections = {
        "units": units,
        "headers": headers,
        "blocks": blocks,
        "events": events,
        "metrics": metrics,
        "live-fields": live_fields,
        "not-executed": not_executed,
    }

    def render(match: re.Match) -> str:
        return match.group(1) + sections[match["name"]]() + match.group(4)

    return _SECTION.sub(render, page)


# ---- sections ------------------------------------------------------------------


def units() -> str:
    rows = [("unit", "kind", "value in base units")]
    base = {"count": "items", "size": "bytes", "duration": "seconds", "percent": "percent points"}
    for unit, (kind, factor) in UNITS.items():
        if unit:
            amount = f"{factor:,.0f}" if factor >= 1 else f"{factor:g}"
            rows.append((f"`{unit}`", kind, f"{amount} {base[kind]}"))
    return _table(rows)


def headers() -> str:
    rows = [("statement", "type", "meaning")]
    for keyword, name in HEADER_KEYWORDS.items():
        info = ProjectConfig.model_fields[name]
        description = (info.description or "").split(": ", 1)[-1]
        rows.append((f"`{keyword}`", type_text(info), description))
    return _table(rows)


def blocks() -> str:
    parts = []
    for attribute, keywords in _block_keywords().items():
        info = OktoConfig.model_fields[attribute]
        title = " / ".join(f"`{k}`" for k in keywords)
        model = model_in(info.annotation)
        if model is None:
            parts.append(f"### {title}\n\n{info.description}\n")
            continue
        parts.append(f"### {title}\n\n{model.__doc__.strip()}\n")
        if model.flattened:
            names = ", ".join(f"`{n} {{ ... }}`" for n in model.flattened)
            parts.append(f"Fields may also sit in a {names} sub-block.\n")
        if model.not_executed:
            names = ", ".join(f"`{n} {{ ... }}`" for n in model.not_executed)
            parts.append(f"A {names} sub-block parses and warns: it is not executed.\n")
        parts.append(_fields_table(model))
        for name, field in model.model_fields.items():
            inner = model_in(field.annotation) or model_in(list_item(field.annotation))
            if inner is not None:
                parts.append(f"#### `{name}`: {inner.__doc__.strip()}\n")
                parts.append(_fields_table(inner))
    return "\n".join(parts)


def events() -> str:
    rows = [("event", "when")]
    rows += [(f"`{event}`", help) for event, help in EVENT_HELP.items()]
    return _table(rows)


def metrics() -> str:
    rows = [("metric", "compares with", "meaning")]
    for name, metric in METRICS.items():
        compares = "numbers" if metric.kind == "number" else f"numbers and {metric.kind}s"
        if metric.kind == "size":
            compares = "sizes (like 12GB)"
        unit = f" ({metric.unit})" if metric.unit else ""
        gpu = "; GPU only, absent on a CPU" if metric.device else ""
        rows.append((f"`{name}`", compares, f"{metric.help}{unit}{gpu}"))
    return _table(rows)


def live_fields() -> str:
    rows = [("TRAIN field", "holds", "takes effect")]
    for name, when in LIVE_FIELDS.items():
        rows.append((f"`{name}`", "whole numbers" if whole_number(name) else "numbers", when))
    return _table(rows)


def not_executed() -> str:
    lines = [", ".join(f"`{keyword}`" for keyword in NOT_EXECUTED_BLOCKS) + ".", ""]
    lines.append("Fields accepted for compatibility, with a warning that they have no effect:")
    lines.append("")
    for keyword, attribute in _first_keywords().items():
        model = model_in(OktoConfig.model_fields[attribute].annotation)
        for name, info in (model.model_fields if model else {}).items():
            if (info.json_schema_extra or {}).get("no_effect"):
                lines.append(f"- `{keyword}.{name}`: {info.description}")
    return "\n".join(lines) + "\n"


# ---- fields --------------------------------------------------------------------


def _fields_table(model: type[BaseModel]) -> str:
    rows = [("field", "type", "default", "meaning")]
    for name, info in model.model_fields.items():
        spellings = [name] + [a for a in _aliases(info) if a != name]
        rows.append(
            (
                " / ".join(f"`{s}`" for s in spellings),
                type_text(info),
                default_text(info),
                (info.description or "").replace("|", "\\|"),
            )
        )
    return _table(rows)


def _aliases(info: FieldInfo) -> list[str]:
    return list(info.validation_alias.choices) if info.validation_alias else []


def type_text(info: FieldInfo) -> str:
    """A field's type in words: `integer ≥ 1`, `one of a, b`, `size (12GB)`."""
    return _annotation_text(info.rebuild_annotation())


def _annotation_text(annotation: Any) -> str:
    # Compared by equality, not identity: typing's cache of Annotated types is
    # bounded, so a rebuilt annotation may be an equal but new object.
    for named, text in ((Size, "size (12GB)"), (Count, "count (120M)"), (Percent, "percent (90%)")):
        if annotation == named:
            return text
    if annotation == Device:
        return "device: auto, cpu, gpu, cuda, cuda:N"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        text = _annotation_text(args[0])
        bounds = _bounds(args[1:])
        return f"{text} {bounds}".strip() if bounds else text
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        return " or ".join(_annotation_text(a) for a in options)
    if origin is list:
        return f"list of {_plural(_annotation_text(args[0]))}"
    if origin is dict:
        return "{ name: value ... }"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "rule" if annotation.__name__ == "Rule" else "block { ... }"
    simple = {bool: "boolean", int: "integer", float: "number", str: "string", Quantity: "quantity"}
    return simple.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _plural(text: str) -> str:
    return {"string": "strings", "rule": "rules", "block { ... }": "blocks { ... }"}.get(text, text)


def _bounds(metadata) -> str:
    symbols = {
        annotated_types.Ge: ("≥", "ge"),
        annotated_types.Gt: (">", "gt"),
        annotated_types.Le: ("≤", "le"),
        annotated_types.Lt: ("<", "lt"),
    }
    parts = []
    for item in metadata:
        for kind, (symbol, attribute) in symbols.items():
            if isinstance(item, kind):
                parts.append(f"{symbol} {getattr(item, attribute)}")
    return ", ".join(parts)


def default_text(info: FieldInfo) -> str:
    if info.default_factory is not None:
        return "see below"
    if info.is_required():
        return "required"
    value = info.default
    if value is None:
        return "unset"
    if isinstance(value, Quantity):
        return f"`{value}`"
    return f"`{json.dumps(value)}`"


# ---- helpers -------------------------------------------------------------------


def _block_keywords() -> dict[str, list[str]]:
    """Root attribute -> its keywords (`dataset` -> [DATASET, DATA])."""
    grouped: dict[str, list[str]] = {}
    for keyword, attribute in BLOCK_KEYWORDS.items():
        grouped.setdefault(attribute, []).append(keyword)
    return grouped


def _first_keywords() -> dict[str, str]:
    return {keywords[0]: attribute for attribute, keywords in _block_keywords().items()}


def _table(rows: list[tuple[str, ...]]) -> str:
    head, *body = rows
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is out of date")
    parser.add_argument("--page", type=Path, default=PAGE)
    args = parser.parse_args(argv)
    current = args.page.read_text(encoding="utf-8")
    fresh = update(current)
    if args.check:
        if fresh != current:
            print(f"{args.page} is out of date: run python -m okto.language.docs", file=sys.stderr)
            return 1
        return 0
    args.page.write_text(fresh, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
