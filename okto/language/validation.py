"""Runs the pydantic models on resolved input and reports their verdict at the
source positions the input came from, in plain words."""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from okto.language.collect import Location, Path
from okto.language.config import FieldConflict, OktoConfig
from okto.language.diagnostics import Diagnostic, OktoValidationError, Source, suggestion


def validate(
    inputs: dict[str, Any], locations: dict[Path, Location], source: Source
) -> tuple[OktoConfig, list[Diagnostic]]:
    """The config and its warnings, or `OktoValidationError` with every error."""
    context: dict[str, list] = {"warnings": []}
    try:
        config = OktoConfig.model_validate(inputs, context=context)
    except ValidationError as error:
        # One error per value: the alternatives of a union fail together.
        by_value: dict[Path, list[dict]] = {}
        for detail in error.errors():
            path = _path(detail)
            where = _nearest(path, locations)
            if detail["type"] == "missing":
                where = (*where, path[-1])
            by_value.setdefault(where, []).append(detail)
        errors = []
        for where, details in by_value.items():
            message, hint = explain_all(details)
            if details[0]["type"] != "value_error" and len(where) > 1:
                message = f"{_field_name(where[1:])}: {message}"
            errors.append(_diagnostic("error", message, hint, where, locations, source))
        raise OktoValidationError(errors) from None
    warnings = [
        _diagnostic("warning", message, hint, _nearest(path, locations), locations, source)
        for path, message, hint in context["warnings"]
    ]
    return config, warnings


def _path(detail: dict) -> Path:
    """The error's location, extended by the field a `FieldConflict` names."""
    cause = (detail.get("ctx") or {}).get("error")
    loc = tuple(detail["loc"])
    return (*loc, *cause.path) if isinstance(cause, FieldConflict) else loc


def _field_name(path: Path) -> str:
    """`("adapter", "rank")` -> `adapter.rank`; list indexes in brackets."""
    name = ""
    for part in path:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else part)
    return name


def _nearest(path: Path, locations: dict[Path, Location]) -> Path:
    """The longest prefix of `path` that has a location (or the empty path)."""
    for end in range(len(path), 0, -1):
        if path[:end] in locations:
            return path[:end]
    return ()


def _diagnostic(severity, message, hint, where: Path, locations, source: Source) -> Diagnostic:
    location = locations.get(where) or locations.get(where[:-1])
    if location is None:
        return Diagnostic(severity, message, source, None, hint)
    return Diagnostic(severity, message, location.source, location.span, hint)


_TYPE_WORDS = {
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "list_type": "a list [ ... ]",
    "dict_type": "a block { ... }",
    "model_type": "a block { ... }",
    "model_attributes_type": "a block { ... }",
    "dataclass_type": "a quantity",
}
_BOUNDS = {
    "greater_than": "above",
    "greater_than_equal": "at least",
    "less_than": "below",
    "less_than_equal": "at most",
}


def explain_all(details: list[dict]) -> tuple[str, str | None]:
    """The errors one value got (several when a union rejected it)."""
    kinds = [d["type"] for d in details]
    if len(details) > 1 and all(kind in _TYPE_WORDS for kind in kinds):
        words = list(dict.fromkeys(_TYPE_WORDS[kind] for kind in kinds))
        if "a number" in words and "a whole number" in words:
            words.remove("a whole number")
        expected = ", ".join(words[:-1]) + " or " + words[-1]
        return f"expected {expected}, got {describe(details[0].get('input'))}", None
    return explain(details[0])


def explain(detail: dict) -> tuple[str, str | None]:
    """A pydantic error as `(message, hint)` in the language's terms."""
    kind, ctx, given = detail["type"], detail.get("ctx") or {}, detail.get("input")
    if kind in _TYPE_WORDS:
        hint = None
        if kind.startswith("bool") and str(given).lower() in ("true", "false"):
            hint = f"booleans are lower case: {str(given).lower()}"
        return f"expected {_TYPE_WORDS[kind]}, got {describe(given)}", hint
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", ctx.get("expected", ""))
        hint = "choose one of: " + ", ".join(choices)
        return f"{describe(given)} is not allowed here{suggestion(str(given), choices)}", hint
    if kind in _BOUNDS:
        bound = next(iter(ctx.values()))
        shown = bound if isinstance(bound, int) else f"{bound:g}"
        return f"must be {_BOUNDS[kind]} {shown}, got {describe(given)}", None
    if kind == "value_error":
        error = ctx["error"]
        return str(error), getattr(error, "hint", None)
    if kind == "missing":
        return "this field is required", None
    if kind == "int_parsing_size":
        return f"{describe(given)} is too large for a whole number", None
    return detail["msg"], None


def describe(value: object) -> str:
    """A value as the user wrote it: 'text', 3, true, a list, a block."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"'{value}'"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a block"
    return str(value)
