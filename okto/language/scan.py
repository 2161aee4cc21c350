"""A bracket-aware scan of raw `.okt` text, for the places the parser cannot
help: finding where to resume after a syntax error, and which `{` a file
that ends too early left open."""

from __future__ import annotations

import re

_TOKEN = re.compile(
    r'(?P<comment>#[^\n]*)|(?P<string>"(?:[^"\\\n]|\\.)*"?)|(?P<name>[A-Za-z_][\w-]*)'
    r"|(?P<open>[{\[])|(?P<close>[}\]])|(?P<newline>\n)|."
)


def statement_starts(text: str) -> list[int]:
    """Offsets where a top-level statement may begin: a name that starts a
    line at bracket depth 0, or an upper-case name at column 1 followed by
    `{` or a string (even when the brackets before it do not balance)."""
    starts = []
    depth = 0
    line_start = True
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup
        if kind == "newline":
            line_start = True
            continue
        if kind == "name" and line_start:
            at_column_one = match.start() == 0 or text[match.start() - 1] == "\n"
            if depth <= 0 or (at_column_one and _opens_statement(text, match)):
                starts.append(match.start())
                depth = 0
        elif kind == "open":
            depth += 1
        elif kind == "close":
            depth -= 1
        if not (kind is None and match.group().isspace()):
            line_start = False
    return starts


def _opens_statement(text: str, match: re.Match) -> bool:
    line_end = text.find("\n", match.end())
    rest = text[match.end() : line_end if line_end >= 0 else len(text)].lstrip()
    return match.group().isupper() and rest[:1] in ("{", '"')


def unclosed_brace(text: str) -> int | None:
    """The offset of the innermost `{` or `[` that is never closed."""
    stack: list[int] = []
    for match in _TOKEN.finditer(text):
        if match.lastgroup == "open":
            stack.append(match.start())
        elif match.lastgroup == "close" and stack:
            stack.pop()
    return stack[-1] if stack else None


def too_deep(text: str, limit: int) -> int | None:
    """The offset of the first bracket nested deeper than `limit`, if any."""
    depth = 0
    for match in _TOKEN.finditer(text):
        if match.lastgroup == "open":
            depth += 1
            if depth > limit:
                return match.start()
        elif match.lastgroup == "close":
            depth = max(0, depth - 1)
    return None
