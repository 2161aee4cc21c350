"""Diagnostics: what went wrong or looks wrong, where, and how it is shown.

Every diagnostic carries a position so that the CLI can print
`file:line:col`, the source line and a caret (spec section 6); the same data
serialises for `okto check --json` and for editors.
"""

from __future__ import annotations

import difflib
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from okto.errors import EXIT_INVALID, OktoError

Severity = Literal["error", "warning", "note"]


@dataclass(frozen=True)
class Span:
    """A range of source text: 1-based line and column, 0-based offsets."""

    line: int
    column: int
    end_line: int
    end_column: int
    start: int
    end: int


@dataclass(frozen=True)
class Source:
    """The text of a `.okt` file and the name it is reported under. An
    `override` is one `BLOCK.field=value` setting (`--set`, or `overrides=` in
    Python): it is named by its own text, and a line and column would mean
    nothing to whoever wrote it."""

    text: str
    filename: str | None = None
    override: bool = False

    @property
    def name(self) -> str:
        if self.override:
            return f"override '{self.text}'"
        return self.filename or "<string>"

    def where(self, span: Span) -> str:
        """`file:line:col`, or the override's name alone."""
        return self.name if self.override else f"{self.name}:{span.line}:{span.column}"

    def line_text(self, line: int) -> str:
        """Line `line` (1-based); only `\n` ends a line, as for the parser."""
        lines = self.text.split("\n")
        return lines[line - 1].rstrip("\r") if 0 < line <= len(lines) else ""

    def span_at(self, offset: int) -> Span:
        """The one-character span at `offset` (clamped to the text)."""
        offset = max(0, min(offset, len(self.text)))
        line = self.text.count("\n", 0, offset) + 1
        column = offset - (self.text.rfind("\n", 0, offset) + 1) + 1
        return Span(line, column, line, column + 1, offset, offset + 1)


@dataclass(frozen=True)
class Diagnostic:
    """One error, warning or note about a position in a source."""

    severity: Severity
    message: str
    source: Source = field(repr=False)
    span: Span | None
    hint: str | None = None

    @property
    def line(self) -> int | None:
        return self.span.line if self.span else None

    @property
    def column(self) -> int | None:
        return self.span.column if self.span else None

    def as_error(self) -> Diagnostic:
        return Diagnostic("error", self.message, self.source, self.span, self.hint)

    def render(self) -> str:
        """`file:line:col: severity: message`, the source line and a caret."""
        if self.span is None:
            head = f"{self.source.name}: {self.severity}: {self.message}"
            return head if self.hint is None else f"{head}\n  = {self.hint}"
        start = self.span.column - 1
        end = self.span.end_column - 1 if self.span.end_line == self.span.line else start + 1
        text, start, end = _around(self.source.line_text(self.span.line), start, end)
        # A control character (a lone \r from old Mac line ends moves the cursor back to
        # the line's start) shows as one replacement character.
        text = "".join("\ufffd" if c < " " and c != "\t" else c for c in text)
        # Copy the line's own tabs into the caret's indentation so that it
        # lines up however the terminal renders tabs; wide characters (CJK)
        # take two cells, combining marks none.
        prefix = "".join(c if c == "\t" else " " * _cells(c) for c in text[:start])
        width = max(1, sum(_cells(c) for c in text[start:end]))
        lines = [
            f"{self.source.where(self.span)}: {self.severity}: {self.message}",
            f"  {text}",
            f"  {prefix}{'^' * width}",
        ]
        if self.hint:
            lines.append(f"  = {self.hint}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "severity": self.severity,
            "message": self.message,
            "file": self.source.name,
            "line": self.line,
            "column": self.column,
            "end_line": self.span.end_line if self.span else None,
            "end_column": self.span.end_column if self.span else None,
            "hint": self.hint,
        }


# A source line longer than this is shown cut down to this many characters around the caret.
SHOWN_LINE = 120


def _around(text: str, start: int, end: int) -> tuple[str, int, int]:
    """A long line cut to the part around characters [start, end), with `...` where text
    was left out, and start and end moved to match."""
    if len(text) <= SHOWN_LINE:
        return text, start, end
    left = max(0, min(start - SHOWN_LINE // 3, len(text) - SHOWN_LINE))
    right = left + SHOWN_LINE
    head = "..." if left else ""
    tail = "..." if right < len(text) else ""
    shift = len(head) - left
    return head + text[left:right] + tail, start + shift, min(end, right) + shift


def _cells(char: str) -> int:
    """Terminal cells `char` takes: 2 for wide (CJK) characters, 0 for combining marks and
    invisible format characters (a zero-width space)."""
    if unicodedata.combining(char) or unicodedata.category(char) == "Cf":
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


class InvalidProgram(OktoError):
    """A `.okt` text that cannot be used. Carries every error found, the first
    one's line and column, and the warnings gathered before giving up.
    `stopped_early` says that there are more errors than `errors` holds: the
    parser gave up after `MAX_SYNTAX_ERRORS` of them."""

    exit_code = EXIT_INVALID

    def __init__(
        self,
        errors: Iterable[Diagnostic],
        warnings: Iterable[Diagnostic] = (),
        stopped_early: bool = False,
    ):
        self.errors = list(errors)
        self.warnings = list(warnings)
        self.stopped_early = stopped_early
        first = self.errors[0]
        self.line = first.line
        self.column = first.column
        self.filename = first.source.name
        super().__init__(first.render())

    def render(self) -> str:
        summary = f"{counted(len(self.errors), 'error')} in {self.filename}"
        if self.stopped_early:
            summary += STOPPED_EARLY
        return "\n\n".join([*(d.render() for d in self.errors), summary])


def counted(count: int, noun: str) -> str:
    """`1 error`, `2 errors`, `2 processes`: a count with its noun in the number it takes."""
    if count == 1:
        return f"{count} {noun}"
    return f"{count} {noun}{'es' if noun.endswith(('s', 'x', 'ch', 'sh')) else 's'}"


STOPPED_EARLY = ", and more after them: checking stops at that many syntax errors"
"""What the summary adds when the parser gave up before the end of the file."""


class OktoSyntaxError(InvalidProgram):
    """The text does not follow the grammar."""


class OktoValidationError(InvalidProgram):
    """The text parses but its blocks, fields or values are not valid."""


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """The closest of `choices` to `word`, compared without regard to case."""
    choices = list(choices)
    by_folded = {c.lower(): c for c in choices}
    match = difflib.get_close_matches(word.lower(), list(by_folded), n=1, cutoff=0.7)
    return by_folded[match[0]] if match else None


def suggestion(word: str, choices: Iterable[str]) -> str:
    """` (did you mean 'x'?)` or an empty string."""
    match = did_you_mean(word, choices)
    return f" (did you mean '{match}'?)" if match else ""
