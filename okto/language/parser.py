"""Text -> syntax tree: Lark's LALR parser, a transformer to typed nodes, and
recovery so that one run reports the syntax errors of several blocks.

Recovery works per top-level statement: after an error, the statement that
holds it is blanked out (line breaks kept, so positions stay right) up to the
next statement, and the text is parsed again.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import replace

from lark import Lark, Token, Transformer, UnexpectedInput, v_args

from okto.grammar import GRAMMAR_PATH
from okto.language import scan, syntax_errors
from okto.language.diagnostics import Diagnostic, OktoSyntaxError, Source, Span
from okto.language.quantities import UNIT_HELP, Quantity, unit_in_its_case
from okto.language.syntax import (
    AdjustStatement,
    AllOf,
    AnyOf,
    Block,
    Bool,
    Comparison,
    Conditional,
    Document,
    Every,
    Field,
    Header,
    Ident,
    ListValue,
    LogStatement,
    Num,
    ObjectValue,
    Qty,
    SaveStatement,
    SetStatement,
    StopStatement,
    Str,
    SubBlock,
    Value,
    VerbStatement,
    VersionHeader,
    Word,
)

MAX_SYNTAX_ERRORS = 20
MAX_NESTING = 64

_VERSION_COMMENT = re.compile(r'#\s*okto_version\s*:\s*"?(?P<version>[^"\s]*)"?')
_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")


@functools.cache
def _lark() -> Lark:
    # cache=True keeps the LALR tables in the temp folder: ~90 ms off each start.
    return Lark(
        GRAMMAR_PATH.read_text(encoding="utf-8"),
        parser="lalr",
        lexer="contextual",
        propagate_positions=True,
        maybe_placeholders=True,
        start=["start", "value"],
        cache=True,
    )


def _span(item) -> Span:
    """The span of a Lark token or of a tree's meta."""
    return Span(
        item.line, item.column, item.end_line, item.end_column, item.start_pos, item.end_pos
    )


@v_args(meta=True)
class ToSyntax(Transformer):
    """Lark tree -> `okto.language.syntax` nodes. Problems it can see only in a
    token's text (bad escapes, unknown units) go to `errors`."""

    def __init__(self, source: Source):
        super().__init__()
        self.source = source
        self.errors: list[Diagnostic] = []

    def _error(self, span: Span, message: str, hint: str | None = None) -> None:
        self.errors.append(Diagnostic("error", message, self.source, span, hint))

    # ---- top level
    def start(self, meta, children):
        return tuple(children)

    def header(self, meta, children):
        keyword, value = children
        return Header(_span(meta), str(keyword), _span(keyword), value)

    def block(self, meta, children):
        keyword, label, body = children
        return Block(_span(meta), str(keyword), _span(keyword), label, body)

    def body(self, meta, children):
        return tuple(children)

    # ---- body items
    def field(self, meta, children):
        key, value = children
        if isinstance(key, Str):
            return Field(_span(meta), key.value, key.span, value)
        return Field(_span(meta), str(key), _span(key), value)

    def subblock(self, meta, children):
        name, body = children
        return SubBlock(_span(meta), str(name), _span(name), body)

    def word(self, meta, children):
        (token,) = children
        self._check_unit(token)
        return Word(_span(meta), str(token))

    def comparison(self, meta, children):
        metric, op, value = children
        return Comparison(_span(meta), str(metric), _span(metric), str(op), value)

    def all_of(self, meta, children):
        return AllOf(_span(meta), tuple(children))

    def any_of(self, meta, children):
        return AnyOf(_span(meta), tuple(children))

    def if_rule(self, meta, children):
        condition, body = children
        return Conditional(_span(meta), "IF", condition, body)

    def when_rule(self, meta, children):
        condition, body = children
        return Conditional(_span(meta), "WHEN", condition, body)

    def every_rule(self, meta, children):
        count, unit, body = children
        return Every(_span(meta), count, str(unit), _span(unit), body)

    def set_action(self, meta, children):
        target, value = children
        return SetStatement(_span(meta), str(target), _span(target), value)

    def adjust_action(self, meta, children):
        direction, target, amount = children
        return AdjustStatement(_span(meta), str(direction), str(target), _span(target), amount)

    def log_action(self, meta, children):
        return LogStatement(_span(meta), children[0])

    def save_action(self, meta, children):
        return SaveStatement(_span(meta), children[0])

    def stop_action(self, meta, children):
        (keyword,) = children
        return StopStatement(_span(meta), str(keyword))

    def verb_action(self, meta, children):
        verb, *value = children  # REPLACE [WITH value], RETURN value
        return VerbStatement(_span(meta), str(verb), value[0] if value else None)

    # ---- values
    def list(self, meta, children):
        return ListValue(_span(meta), tuple(children))

    def object(self, meta, children):
        return ObjectValue(_span(meta), children[0])

    def string(self, meta, children):
        (token,) = children
        try:
            # strict=False: a tab typed into a string is a tab (JSON wants \t)
            text = json.loads(token, strict=False)
        except json.JSONDecodeError:
            self._error(
                _span(token),
                "this string has an invalid escape sequence",
                'escapes are \\n \\t \\" \\\\ \\uXXXX; write \\\\ for a backslash, '
                "or use / in paths",
            )
            text = token[1:-1]
        if "\0" in text:
            # no setting needs one, and a path holding it stops the OS calls with a ValueError
            self._error(_span(token), "a string cannot hold the NUL character (U+0000)")
        elif _LONE_SURROGATE.search(text):
            # json takes `\ud83d` alone; UTF-8 cannot write it (a run folder, a log line)
            self._error(
                _span(token),
                "this string has half of a \\u surrogate pair, which is no character",
                "write the character itself, or both halves (\\ud83d\\ude00 is one emoji)",
            )
        return Str(_span(meta), text)

    def number(self, meta, children):
        (token,) = children
        value = _number(token)
        self._check_finite(token, value)
        return Num(_span(meta), value)

    def quantity(self, meta, children):
        (token,) = children
        quantity = Quantity.parse(token)
        self._check_finite(token, quantity.value)
        return Qty(_span(meta), quantity)

    def _check_finite(self, token: Token, value: int | float) -> None:
        """`1e400` reads as infinity in floating point; no setting means that."""
        if math.isinf(value):
            self._error(_span(token), f"{token} is out of range", "numbers go up to about 1.8e308")

    def name(self, meta, children):
        (token,) = children
        self._check_unit(token)
        return Ident(_span(meta), str(token))

    def true(self, meta, children):
        return Bool(_span(meta), True)

    def false(self, meta, children):
        return Bool(_span(meta), False)

    def _check_unit(self, token: Token) -> None:
        """A name glued to a number (`12G`) is a unit the lexer did not know, unless the
        two are a number in another notation (`1_000`, `0x10`)."""
        text, start = self.source.text, token.start_pos
        if start == 0 or not text[start - 1].isdigit():
            return
        first = start
        while first > 0 and (text[first - 1].isdigit() or text[first - 1] == "."):
            first -= 1
        written = text[first:start] + token
        span = _span(token)
        number = replace(span, column=span.column - (start - first), start=first)
        if re.fullmatch(r"\d+(_\d+)+", written):
            self._error(number, "'_' cannot group digits", f"write {written.replace('_', '')}")
        elif re.fullmatch(r"0([xX][\da-fA-F]+|[oO][0-7]+|[bB][01]+)", written):
            self._error(number, "numbers are written in decimal", f"write {int(written, 0)}")
        else:
            meant = unit_in_its_case(str(token))
            hint = (
                f"units are case-sensitive: write {text[first:start]}{meant}"
                if meant
                else f"a quantity is a number followed by {UNIT_HELP}"
            )
            self._error(span, f"unknown unit '{token}'", hint)


def _number(text: str) -> int | float:
    return float(text) if any(c in text for c in ".eE") else int(text)


def parse_document(source: Source) -> Document:
    """Parse `source` into a `Document`, or raise `OktoSyntaxError` listing the
    syntax errors of every top-level statement that has one."""
    text = source.text
    deep = scan.too_deep(text, MAX_NESTING)
    if deep is not None:
        message = f"brackets nested more than {MAX_NESTING} deep"
        raise OktoSyntaxError([Diagnostic("error", message, source, source.span_at(deep))])
    errors: list[Diagnostic] = []
    while True:
        try:
            tree = _lark().parse(text, start="start")
            break
        except UnexpectedInput as error:
            if len(errors) == MAX_SYNTAX_ERRORS:
                raise OktoSyntaxError(errors, stopped_early=True) from None
            errors.append(syntax_errors.describe(error, source))
            if _at_end(error):
                raise OktoSyntaxError(errors) from None
            blanked = _blank(text, *_statement_around(text, error))
            if blanked == text:
                raise OktoSyntaxError(errors) from None
            text = blanked
    transformer = ToSyntax(source)
    statements = transformer.transform(tree)
    errors = sorted(errors + transformer.errors, key=lambda d: d.span.start if d.span else 0)
    if errors:
        raise OktoSyntaxError(errors)
    return Document(source, statements, read_version(source))


def parse_value(text: str, source: Source) -> Value:
    """Parse one value, as written after `key:` (used for `--set` overrides)."""
    tree = _lark().parse(text, start="value")
    transformer = ToSyntax(source)
    value = transformer.transform(tree)
    if transformer.errors:
        raise OktoSyntaxError(transformer.errors)
    return value


def read_version(source: Source) -> VersionHeader | None:
    """The `# okto_version: "x"` comment among the comments before the first statement."""
    offset = 0
    for line in source.text.split("\n"):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            return None
        match = _VERSION_COMMENT.match(stripped)
        if match:
            column = line.index("#")
            span = source.span_at(offset + column)
            return VersionHeader(match["version"], span)
        offset += len(line) + 1
    return None


# ---- recovery ------------------------------------------------------------------


def _statement_around(text: str, error: UnexpectedInput) -> tuple[int, int]:
    """The range to blank after `error`: from the start of the top-level
    statement holding it to the start of the next one (or the end). An
    error right at a statement's first name belongs to the statement before:
    the name arrived while that one was still incomplete."""
    position = error.pos_in_stream
    starts = scan.statement_starts(text)
    start = max((s for s in starts if s < position), default=0)
    end = next((s for s in starts if s > start and s >= position), len(text))
    return start, end


def _at_end(error: UnexpectedInput) -> bool:
    """Whether the parser ran out of text (nothing after it to recover into)."""
    token = getattr(error, "token", None)
    return error.pos_in_stream is None or (token is not None and token.type == "$END")


def _blank(text: str, start: int, end: int) -> str:
    return text[:start] + re.sub(r"[^\n]", " ", text[start:end]) + text[end:]
