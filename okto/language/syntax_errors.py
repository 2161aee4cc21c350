"""Lark's syntax errors, told in words a user understands (spec section 6):
what was found, what was expected ("a value", "'}'", not `RBRACE`), and a hint
for the usual slips (typographic quotes, `=` for `:`, a missing `:`)."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import replace

from lark import UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from okto.language import scan
from okto.language.diagnostics import Diagnostic, Source, Span

_PUNCTUATION = {
    "LBRACE": "'{'",
    "RBRACE": "'}'",
    "COLON": "':'",
    "COMMA": "','",
    "LSQB": "'['",
    "RSQB": "']'",
    "LPAR": "'('",
    "RPAR": "')'",
    "EQUAL": "'='",
}
_SCALARS = {"STRING", "NUMBER", "QUANTITY"}
_VALUES = _SCALARS | {"TRUE", "FALSE"}
# What may follow a top-level keyword: its value, or the `{` of its body.
_AFTER_KEYWORD = _SCALARS | {"LSQB", "LBRACE"}
_STATEMENTS = {
    "IF",
    "WHEN",
    "EVERY",
    "SET",
    "INCREASE",
    "DECREASE",
    "LOG",
    "SAVE",
    "STOP",
    "STOP_TRAINING",
    "RETRY",
    "REGENERATE",
    "REPLACE",
    "RETURN",
    "ALERT",
}
# How a statement is written, for a keyword followed by anything but its arguments
# (`LOG }`, `SET = 3`, `EVERY steps`); a ':' or '{' after it reads as a field or a block.
_USAGE = {
    "EVERY": "EVERY 100 steps { ... }",
    "SET": "SET learning_rate = 1e-4",
    "INCREASE": "INCREASE batch_size BY 2",
    "DECREASE": "DECREASE learning_rate BY 50%",
    "LOG": 'LOG "a message", or LOG loss for a metric\'s value',
    "SAVE": 'SAVE model, SAVE checkpoint or SAVE "a label"',
    "RETURN": 'RETURN "a value"',
}
# The order in which expected things are listed.
_ORDER = ["RBRACE", "RSQB", "RPAR", "COLON", "EQUAL", "LBRACE", "LSQB", "COMMA"]

_TYPOGRAPHIC_DOUBLE = "“”„‟″«»"
_TYPOGRAPHIC_SINGLE = "‘’‚‛′"


def expected_words(names: set[str]) -> str:
    """`{"RBRACE", "COLON", ...}` -> "'}' or ':'"; groups values and statements."""
    names = set(names)
    if names == {"NAME", "$END"}:
        phrases = ['a block (KEYWORD { ... }) or a header (PROJECT "name")']
        names.clear()
    else:
        phrases = []
    if names >= _STATEMENTS:
        names -= _STATEMENTS | {"NAME", "STRING"}
        item = "a field (name: value), a block (name { ... }) or a statement (IF, SET, LOG, ...)"
        phrases.append(item)
    if names >= _SCALARS:
        names -= _VALUES | {"NAME", "LSQB"}
        phrases.append("a value")
    for name in _ORDER:
        if name in names:
            phrases.append(_PUNCTUATION[name])
            names.discard(name)
    described = {
        "COMPARE": "a comparison (>, <, >=, <=, ==, !=)",
        "NAME": "a name",
        "STRING": "a string",
        "NUMBER": "a number",
        "QUANTITY": "a quantity (like 12GB)",
        "TRUE": "true",
        "FALSE": "false",
        "$END": "the end of the file",
    }
    for name in sorted(names):
        phrases.append(described.get(name) or _PUNCTUATION.get(name) or name)
    if len(phrases) <= 1:
        return "".join(phrases)
    return ", ".join(phrases[:-1]) + " or " + phrases[-1]


def _found(token) -> str:
    kind, text = token.type, str(token)
    if kind == "STRING":
        return "string " + (text if len(text) <= 30 else text[:26] + '..."')
    if kind in ("NUMBER", "QUANTITY"):
        return f"{kind.lower()} {text}"
    if kind in _STATEMENTS or kind in ("AND", "OR", "BY", "WITH", "TRUE", "FALSE"):
        return f"keyword {text}"
    return f"'{text}'"


def describe(error: UnexpectedInput, source: Source) -> Diagnostic:
    """One diagnostic for a Lark syntax error."""
    if isinstance(error, UnexpectedCharacters):
        return _unexpected_character(error, source)
    if isinstance(error, UnexpectedToken):
        return _unexpected_token(error, source)
    span = source.span_at(error.pos_in_stream or len(source.text))
    return Diagnostic("error", "the file ends too early", source, span)


def _unexpected_character(error: UnexpectedCharacters, source: Source) -> Diagnostic:
    char = source.text[error.pos_in_stream]
    span = source.span_at(error.pos_in_stream)
    if char in _TYPOGRAPHIC_DOUBLE or char in _TYPOGRAPHIC_SINGLE:
        message = f"typographic quote {char} is not a string quote"
        hint = 'write strings between straight double quotes: "like this"'
    elif char == "'":
        message = "strings are written between double quotes, not single quotes"
        hint = 'write "like this"'
    elif char == '"':
        message = "this string is not closed before the end of the line"
        hint = 'add the closing "; write \\n for a line break inside a string'
        line_end = source.text.find("\n", error.pos_in_stream)
        if '\\"' in source.text[error.pos_in_stream : line_end if line_end >= 0 else None]:
            hint = '\\" is a quote inside the string: end a Windows path with \\\\ or /'
    elif char in _PATH_CHARACTERS and (word := _unquoted_path(source.text, error.pos_in_stream)):
        message = f"unexpected character '{char}'"
        hint = f'paths and hub names go in double quotes: "{word}"'
    elif not char.isprintable():
        message = f"unexpected invisible character {_code_point(char)}"
        hint = "delete it; such characters come in with pasted or joined text"
    elif char.isalpha():
        message = f"unexpected character '{char}'"
        hint = "names use the letters A-Z, digits, _ and -; put other text in a string"
    elif char in _LOGIC_CHARACTERS:
        message = f"unexpected character '{char}'"
        hint = _LOGIC_CHARACTERS[char]
    else:
        message = f"unexpected character '{char}'"
        hint = None
    if hint is None and error.allowed:
        message += f": expected {expected_words(error.allowed)}"
    return Diagnostic("error", message, source, span, hint)


_NO_NOT = "conditions have no NOT: write the opposite comparison (> and <=, < and >=, == and !=)"
_LOGIC_CHARACTERS = {"&": "conditions join with AND", "|": "conditions join with OR", "!": _NO_NOT}

_PATH_CHARACTERS = "/.\\~"
_PATH_WORD = re.compile(r"[^\s{}\[\](),:\"#]+")


def _unquoted_path(text: str, offset: int) -> str | None:
    """The path-like word around `offset` (`data/train.jsonl`, `Qwen/Qwen2-0.5B`), when
    it is a value: after a `:` or the start of a list item."""
    start = offset
    while start > 0 and _PATH_WORD.fullmatch(text[start - 1]):
        start -= 1
    match = _PATH_WORD.match(text, start)
    before = text[:start].rstrip()
    return match.group() if match and before[-1:] in (":", "[", ",") else None


def _code_point(char: str) -> str:
    """`U+FEFF (ZERO WIDTH NO-BREAK SPACE)`, or `U+0000` for a character without a name."""
    name = unicodedata.name(char, "")
    return f"U+{ord(char):04X}" + (f" ({name})" if name else "")


def _unexpected_token(error: UnexpectedToken, source: Source) -> Diagnostic:
    token = error.token
    expected = set(getattr(error, "accepts", None) or error.expected)
    words = expected_words(expected)
    hint = None
    if token.type == "$END":
        span = source.span_at(len(source.text.rstrip()))
        if "RBRACE" in expected:
            message = "the file ends inside a block: expected '}'"
        else:
            message = f"the file ends too early: expected {words}"
        brace = scan.unclosed_brace(source.text)
        if brace is not None and expected & {"RBRACE", "RSQB"}:
            opened = source.span_at(brace)
            hint = f"the '{source.text[brace]}' at line {opened.line}, column {opened.column} is never closed"
        return Diagnostic("error", message, source, span, hint)

    span = Span(
        token.line, token.column, token.end_line, token.end_column, token.start_pos, token.end_pos
    )
    previous = _name_before(source.text, token.start_pos)
    unmatched = scan.unclosed_brace(source.text[: token.start_pos]) is None
    if token.type == "RBRACE" and expected <= {"NAME", "$END", "LBRACE"} and unmatched:
        message = "'}' has no matching '{'"
    elif token.type == "COLON" and "LBRACE" in expected and "COMPARE" not in expected and previous:
        message = f"'{previous}:' is a field, and fields go inside a block"
        hint = "for example: TRAIN { epochs: 3 }"
    elif expected - {"TRUE", "FALSE"} == _AFTER_KEYWORD and previous:
        message, hint = _keyword_alone(previous, token, _unquoted_value(source.text, token))
    elif token.type == "EQUAL" and "COLON" in expected:
        message = "use ':' between a field name and its value, not '='"
    elif "COLON" in expected and previous and (token.type in _VALUES or token.type == "LSQB"):
        message = f"missing ':' between '{previous}' and its value"
        hint = f"write {previous}: {token}"
    elif previous in ("STOP", "STOP_TRAINING") and token.type in _SCALARS:
        message = f"{previous} takes no argument: found {_found(token)}"
        reason = token if token.type == "STRING" else f'"{token}"'
        hint = f"to log a reason, write LOG {reason} before {previous}"
    else:
        message = f"unexpected {_found(token)}: expected {words}"
        hint = _rule_hint(source.text, token, expected, previous)
        if hint is None and previous in _USAGE and token.type not in ("COLON", "LBRACE"):
            hint = f"for example: {_USAGE[previous]}"
        elif hint is None and previous in _STATEMENTS:
            hint = f"{previous} is a keyword: it cannot name a field or a block"
    keyword = _lower_case_keyword(source.text, token.start_pos)
    if keyword is not None:
        word = keyword["word"]
        at = source.span_at(keyword.start("word"))
        span = replace(at, end_column=at.column + len(word), end=keyword.end("word"))
        message = f"'{word}' is not a keyword: keywords are upper case"
        hint = f"write {word.upper()}"
    return Diagnostic("error", message, source, span, hint)


def _rule_hint(text: str, token, expected: set[str], previous: str | None) -> str | None:
    """A hint for the usual slips in CONTROL rules: `and`, `NOT`, `TO`, a rule's actions
    without braces, `EVERY 100` without its unit, `SET lr: 1`."""
    word = str(token).upper() if token.type == "NAME" else None
    if word in expected:  # and, or, by
        return f"keywords are upper case: {word}"
    if previous == "NOT" and expected == {"COMPARE"}:
        return _NO_NOT
    if word == "TO" and expected == {"BY"}:
        return (
            f"INCREASE and DECREASE take BY an amount; for a new value write SET {previous} = ..."
        )
    if {"LBRACE", "AND", "OR"} <= expected and "NAME" not in expected:
        return "a rule's actions go in braces after its condition: IF loss > 3 { STOP }"
    if (
        token.type == "LBRACE"
        and expected == {"NAME"}
        and _EVERY_COUNT.search(text, 0, token.start_pos)
    ):
        return "EVERY counts steps or epochs: EVERY 100 steps { ... }"
    if previous in ("IF", "WHEN", "AND", "OR") and expected == {"LPAR", "NAME"}:
        return "a condition begins with a metric's name: loss > 2.0"
    if token.type == "COLON" and expected == {"EQUAL"}:
        return f"SET takes '=': SET {previous} = ..."
    if token.type == "EQUAL" and expected == {"COMPARE"}:  # `loss = 3`, `loss => 3`
        after = text[token.end_pos : token.end_pos + 1]
        if after in ("<", ">"):
            return f"write {after}= (the '=' comes second)"
        return "'=' is for SET; to compare, write =="
    return None


_EVERY_COUNT = re.compile(r"\bEVERY\s+\S+\s*$")
_RULE_KEYWORDS = {"if", "when", "every", "set", "increase", "decrease", "log", "save", "stop"}
_ITEM_START = re.compile(r"[{}\n][ \t]*(?P<word>[a-z]+)\b(?=[^{}\n]*$)")


def _lower_case_keyword(text: str, offset: int) -> re.Match | None:
    """A lower-case rule keyword (`if`, `set`, ...) at the start of the CONTROL item that
    holds `offset` (after the last brace or line break): the parser read it as a name, and
    the error comes later in the rule."""
    match = _ITEM_START.search(text, 0, offset)
    if match is None or match["word"] not in _RULE_KEYWORDS:
        return None
    statement = max((s for s in scan.statement_starts(text) if s <= offset), default=0)
    return match if text.startswith("CONTROL", statement) else None


def _unquoted_value(text: str, token) -> str | None:
    """The rest of the line from a name `token` on (its comment left out), when the token
    sits on the line of the keyword before it: `PROJECT my project` -> `my project`."""
    line_start = text.rfind("\n", 0, token.start_pos) + 1
    if token.type != "NAME" or not text[line_start : token.start_pos].strip():
        return None
    line_end = text.find("\n", token.start_pos)
    return text[token.start_pos : line_end if line_end >= 0 else None].split("#")[0].strip()


def _keyword_alone(keyword: str, token, unquoted: str | None) -> tuple[str, str]:
    """The message and hint for a top-level keyword followed by neither its value nor `{`:
    a header (PROJECT) takes a value, a block (TRAIN) a body, anything else either. Words
    after a header on its line are its value unquoted (`PROJECT my-project`)."""
    from okto.language.config import BLOCK_KEYWORDS, HEADER_KEYWORDS, NOT_EXECUTED_BLOCKS

    if keyword in HEADER_KEYWORDS and unquoted:
        return f"{keyword} takes a string in double quotes", f'write {keyword} "{unquoted}"'
    if keyword in HEADER_KEYWORDS:
        message = f"'{keyword}' needs a value before {_found(token)}"
        return message, f'for example: {keyword} "a value"'
    if keyword in BLOCK_KEYWORDS or keyword in NOT_EXECUTED_BLOCKS:
        return (
            f"'{keyword}' needs a body in braces before {_found(token)}",
            f"for example: {keyword} {{ ... }}",
        )
    return (
        f"'{keyword}' needs a value or a body in braces before {_found(token)}",
        f'for example: {keyword} "a value" or {keyword} {{ ... }}',
    )


_NAME_AT_END = re.compile(r"([A-Za-z_][\w-]*)\s*$")


def _name_before(text: str, offset: int) -> str | None:
    """The name just before `offset`, across white space."""
    match = _NAME_AT_END.search(text, 0, offset)
    return match.group(1) if match else None
