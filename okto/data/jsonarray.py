"""Reading a top-level JSON array one element at a time, recovering a cut-off file.

Large exported datasets (ShareGPT's 125 MB dump among them) are often cut off
mid-record, and then `json.load` and `datasets`' JSON loader reject the whole
file. Decoding element by element with `JSONDecoder.raw_decode` over a sliding
window keeps every complete record, holds only one window of text and one
record at a time, and finds where the cut is. A syntax error before the end
of the file is not a cut: that stays an error naming the line and column.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from okto.data.encoding import not_utf8
from okto.data.errors import JSON_ERRORS, DataError, json_reason

WINDOW_CHARS = 1 << 22
_SPACE = re.compile(r"[ \t\r\n]*")
# What a value cut off at the end of the file leaves where json stops reading.
_LITERALS = ("true", "false", "null", "NaN", "Infinity", "-Infinity")
_NUMBER_TAIL = re.compile(r"\.\d*(?:[eE][+-]?\d*)?|[eE][+-]?\d*")
_ESCAPE_TAIL = re.compile(r"u[0-9a-fA-F]{0,4}")  # 4: a surrogate pair's first half


@dataclass
class Cut:
    """Where a truncated array ended: the incomplete record's line and size."""

    line: int
    chars: int


class _Window:
    """Decoded text of the file from some point on, refilled as reading moves."""

    def __init__(self, f, path: Path):
        self.f, self.path = f, path
        self.decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self.text = ""
        self.pos = 0
        self.eof = False
        self._line, self._line_pos = 1, 0  # line number at text[_line_pos]
        self._start_column = 0  # 0-based column of text[0]

    def refill(self, size: int) -> bool:
        """Drop what was read, append up to `size` bytes; False at the end of the file."""
        if self.eof:
            return False
        raw = self.f.read(size)
        try:
            chunk = self.decoder.decode(raw, final=not raw)
        except UnicodeDecodeError:
            if not raw:  # the cut fell inside a multi-byte character
                chunk = ""
            else:
                raise not_utf8(self.path) from None
        self.eof = not raw
        self.line_at(self.pos)
        self._start_column = self.column_at(self.pos) - 1
        self.text = self.text[self.pos :] + chunk
        self._line_pos -= self.pos
        self.pos = 0
        return True

    def skip_space(self) -> str | None:
        """The next non-blank character (the window's pos moves to it), None at the end."""
        while True:
            self.pos = _SPACE.match(self.text, self.pos).end()
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self.refill(WINDOW_CHARS):
                return None

    def column_at(self, pos: int) -> int:
        """1-based column of text[pos]."""
        newline = self.text.rfind("\n", 0, pos)
        return pos - newline if newline >= 0 else self._start_column + pos + 1

    def line_at(self, pos: int) -> int:
        """Line number of text[pos]; positions must not go backwards."""
        self._line += self.text.count("\n", self._line_pos, pos)
        self._line_pos = pos
        return self._line


def iter_json_array(path: Path, cuts: list[Cut]) -> Iterator[tuple[Any, int]]:
    """Yield (element, line) for each complete element; a cut is appended to `cuts`."""
    decoder = json.JSONDecoder()
    with open(path, "rb") as f:
        window = _Window(f, path)
        if window.skip_space() != "[":
            raise DataError(f"{path} does not hold a JSON array")
        window.pos += 1
        if window.skip_space() == "]":
            _check_end(window)
            return
        while True:
            line = window.line_at(window.pos)
            value = _decode_next(decoder, window, cuts)
            if value is None:
                return
            yield value[0], line
            after = window.skip_space()
            if after is None:  # complete records, then the end: only `]` is missing
                cuts.append(Cut(line=window.line_at(window.pos), chars=0))
                return
            if after == "]":
                _check_end(window)
                return
            if after != ",":
                line = window.line_at(window.pos)
                raise DataError(f"{path}, line {line}: expected ',' or ']' between array elements")
            window.pos += 1
            if window.skip_space() is None:
                cuts.append(Cut(line=window.line_at(window.pos), chars=0))
                return


def _check_end(window: _Window) -> None:
    """Only blanks may follow the array's closing bracket: the records of a second array
    (two exports appended to one file) would otherwise be left out without a word."""
    window.pos += 1
    if window.skip_space() is not None:
        raise DataError(
            f"{window.path}, line {window.line_at(window.pos)} column "
            f"{window.column_at(window.pos)}: more data after the JSON array's closing bracket "
            "(a second array?); okto reads one array per file: join them into one array, or "
            "write one record per line (JSON lines)"
        )


def _decode_next(decoder: json.JSONDecoder, window: _Window, cuts: list[Cut]) -> tuple | None:
    """The element at the window's pos as a 1-tuple (None at a cut), growing the window."""
    size = WINDOW_CHARS
    while True:
        try:
            value, end = decoder.raw_decode(window.text, window.pos)
        except json.JSONDecodeError as error:
            if window.refill(size):
                size *= 2
                continue
            if _is_cut(error, window.text):
                start = window.pos
                cuts.append(Cut(line=window.line_at(start), chars=len(window.text) - start))
                return None
            raise DataError(
                f"{window.path}, line {window.line_at(error.pos)} column "
                f"{window.column_at(error.pos)}: invalid JSON ({error.msg})"
            ) from None
        except JSON_ERRORS as error:
            raise DataError(
                f"{window.path}, line {window.line_at(window.pos)}: cannot read the record "
                f"there ({json_reason(error)})"
            ) from None
        # A number or literal at the window's edge may continue past it.
        if _SPACE.match(window.text, end).end() < len(window.text) or window.eof:
            window.pos = end
            return (value,)
        window.refill(size)


def _is_cut(error: json.JSONDecodeError, text: str) -> bool:
    """Whether decoding failed only because the text ended: inside a string, a `\\u`
    escape, a literal (`tru`) or a number (json reads `1` of `1.` or `1e+` and names the
    character after it)."""
    tail = text[error.pos :]
    if error.msg.startswith("Unterminated string") or not tail.strip():
        return True
    if error.msg.startswith("Invalid \\uXXXX escape"):
        return _ESCAPE_TAIL.fullmatch(tail) is not None
    return any(word.startswith(tail) for word in _LITERALS) or bool(_NUMBER_TAIL.fullmatch(tail))
