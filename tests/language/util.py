"""Helpers for the language tests: parse dedented text, list problems."""

from __future__ import annotations

import textwrap
from pathlib import Path

import okto
from okto.language import InvalidProgram, Program

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.okt"))


def program(text: str, filename: str = "t.okt") -> Program:
    return okto.parse(textwrap.dedent(text), filename)


def errors(text: str) -> list[tuple[int | None, int | None, str]]:
    """(line, column, message) of every error `text` has; fails if it has none."""
    try:
        program(text)
    except InvalidProgram as invalid:
        return [(d.line, d.column, d.message) for d in invalid.errors]
    raise AssertionError("the text is valid")


def error(text: str) -> tuple[int | None, int | None, str]:
    """The one error of `text`."""
    (only,) = errors(text)
    return only


def warnings(text: str, severity: str = "warning") -> list[tuple[int | None, int | None, str]]:
    return [(d.line, d.column, d.message) for d in program(text).warnings if d.severity == severity]
