"""The syntax tree of a `.okt` file: typed nodes, each with its source span.

The parser's transformer builds these from Lark's tree; the resolver turns
them into config models. Nodes know nothing about blocks or fields: that is
the resolver's business.
"""

from __future__ import annotations

from dataclasses import dataclass

from okto.language.diagnostics import Source, Span
from okto.language.quantities import Quantity


@dataclass(frozen=True)
class Node:
    span: Span


# ---- values -----------------------------------------------------------------


@dataclass(frozen=True)
class Str(Node):
    value: str


@dataclass(frozen=True)
class Num(Node):
    value: int | float


@dataclass(frozen=True)
class Qty(Node):
    value: Quantity


@dataclass(frozen=True)
class Bool(Node):
    value: bool


@dataclass(frozen=True)
class Ident(Node):
    """An unquoted name used as a value, e.g. `format: jsonl` or `SAVE model`."""

    name: str


@dataclass(frozen=True)
class ListValue(Node):
    items: tuple[Value, ...]


@dataclass(frozen=True)
class ObjectValue(Node):
    """`{ key: value ... }`; its body may hold anything a block body holds."""

    body: Body


Scalar = Str | Num | Qty | Bool | Ident
Value = Str | Num | Qty | Bool | Ident | ListValue | ObjectValue


# ---- body items -------------------------------------------------------------


@dataclass(frozen=True)
class Field(Node):
    key: str
    key_span: Span
    value: Value


@dataclass(frozen=True)
class SubBlock(Node):
    """`name { body }`, e.g. `params { ... }`, `ADAPTER { ... }`, `on_nan { ... }`."""

    name: str
    name_span: Span
    body: Body


@dataclass(frozen=True)
class Word(Node):
    """A bare name in a body, e.g. each metric in `METRICS { loss perplexity }`."""

    name: str


@dataclass(frozen=True)
class Comparison(Node):
    metric: str
    metric_span: Span
    op: str
    value: Scalar


@dataclass(frozen=True)
class AllOf(Node):
    operands: tuple[Condition, ...]


@dataclass(frozen=True)
class AnyOf(Node):
    operands: tuple[Condition, ...]


Condition = Comparison | AllOf | AnyOf


@dataclass(frozen=True)
class Conditional(Node):
    """`IF cond { ... }` or `WHEN cond { ... }`."""

    keyword: str
    condition: Condition
    body: Body


@dataclass(frozen=True)
class Every(Node):
    """`EVERY n steps { ... }` or `EVERY n epochs { ... }`."""

    count: Num | Qty
    unit: str
    unit_span: Span
    body: Body


@dataclass(frozen=True)
class SetStatement(Node):
    target: str
    target_span: Span
    value: Value


@dataclass(frozen=True)
class AdjustStatement(Node):
    """`INCREASE name BY value` or `DECREASE name BY value`."""

    direction: str
    target: str
    target_span: Span
    amount: Num | Qty


@dataclass(frozen=True)
class LogStatement(Node):
    value: Scalar


@dataclass(frozen=True)
class SaveStatement(Node):
    value: Scalar


@dataclass(frozen=True)
class StopStatement(Node):
    """`STOP` or `STOP_TRAINING`, as written (messages name the word the user wrote)."""

    keyword: str


@dataclass(frozen=True)
class VerbStatement(Node):
    """An inference-time verb: RETRY, REGENERATE, REPLACE [WITH v], RETURN, ALERT."""

    verb: str
    value: Scalar | None


Statement = (
    Conditional
    | Every
    | SetStatement
    | AdjustStatement
    | LogStatement
    | SaveStatement
    | StopStatement
    | VerbStatement
)
Item = Field | SubBlock | Word | Str | Comparison | Statement
Body = tuple[Item, ...]


# ---- top level --------------------------------------------------------------


@dataclass(frozen=True)
class Header(Node):
    """`PROJECT "name"`, `TAGS [...]`: a keyword and one value."""

    keyword: str
    keyword_span: Span
    value: Value


@dataclass(frozen=True)
class Block(Node):
    keyword: str
    keyword_span: Span
    label: Str | None
    body: Body


@dataclass(frozen=True)
class VersionHeader:
    """The `# okto_version: "1.3"` comment before the first statement."""

    version: str
    span: Span


@dataclass(frozen=True)
class Document:
    source: Source
    statements: tuple[Header | Block, ...]
    version: VersionHeader | None
