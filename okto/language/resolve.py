"""Syntax tree -> the input of `OktoConfig`: block keywords and field
spellings become canonical names, values become Python values, and each
value's source position is recorded. Problems the models cannot see (unknown
blocks and fields, repeats, blocks okto does not execute) are reported here,
with suggestions."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from okto.language.collect import Collector, Location, Path
from okto.language.config import (
    BLOCK_KEYWORDS,
    HEADER_KEYWORDS,
    LANGUAGE_VERSIONS,
    NOT_EXECUTED_BLOCKS,
    OktoConfig,
    spellings,
)
from okto.language.control_builder import ControlBuilder
from okto.language.diagnostics import Diagnostic, Span, did_you_mean, suggestion
from okto.language.fieldtypes import unwrap
from okto.language.quantities import UNITS
from okto.language.syntax import (
    Block,
    Body,
    Bool,
    Document,
    Field,
    Header,
    Ident,
    ListValue,
    Num,
    ObjectValue,
    Qty,
    Str,
    SubBlock,
    Value,
    Word,
)

KEYWORDS = (*BLOCK_KEYWORDS, *HEADER_KEYWORDS, *NOT_EXECUTED_BLOCKS)

# Fields other OktoScript tools place elsewhere: where they belong here.
_MOVED = {
    ("env", "blas_backend"): "set backend in the BLAS block",
    ("env", "cuda_streams"): "set streams in the BLAS block",
    ("env", "tensor_cores"): "use the TENSOR_CORES block",
    ("train", "gpu"): 'set device: "cuda" here, or accelerator: "gpu" in ENV',
}

# Where okto does what a block it does not execute asks for.
_INSTEAD = {
    "FT_LORA": "to train a LoRA adapter write MODEL { ADAPTER { rank: 8  alpha: 32 } }, "
    "with the data in DATASET and the rest in TRAIN",
    "VALIDATE": "evaluation runs at each epoch end, or every TRAIN.eval_steps steps",
}


@dataclass
class Resolution:
    """What `OktoConfig.model_validate` gets, where each part came from, and
    the diagnostics found on the way."""

    inputs: dict[str, Any]
    locations: dict[Path, Location]
    errors: list[Diagnostic]
    warnings: list[Diagnostic]


def resolve(document: Document) -> Resolution:
    resolver = _Resolver(Collector(document.source))
    inputs = resolver.run(document)
    collect = resolver.collect
    return Resolution(inputs, collect.locations, collect.errors, collect.warnings)


class _Resolver:
    def __init__(self, collect: Collector):
        self.collect = collect
        self.inputs: dict[str, Any] = {}
        self.first_seen: dict[str, Block | Header] = {}
        self.control: Block | None = None

    def run(self, document: Document) -> dict[str, Any]:
        if document.version is not None:
            self._version(document.version)
        for statement in document.statements:
            if isinstance(statement, Header):
                self._header(statement)
            else:
                self._block(statement)
        # CONTROL last: its checks read TRAIN and ENV.
        if self.control is not None:
            self._control(self.control)
        return self.inputs

    def _version(self, header) -> None:
        self.inputs["language_version"] = header.version
        self.collect.locate(("language_version",), header.span)
        if header.version not in LANGUAGE_VERSIONS:
            self.collect.warn(
                header.span,
                f"unknown okto_version '{header.version}'; reading it as the latest, "
                f"{LANGUAGE_VERSIONS[-1]}",
                "known versions: " + ", ".join(LANGUAGE_VERSIONS),
            )

    def _first(self, statement: Block | Header) -> bool:
        """Record the first use of a keyword; report any later one."""
        keyword = statement.keyword
        identity = BLOCK_KEYWORDS.get(keyword) or keyword
        earlier = self.first_seen.get(identity)
        if earlier is None:
            self.first_seen[identity] = statement
            return True
        spellings_note = (
            f"{earlier.keyword} and {keyword} are two spellings of one block: "
            if earlier.keyword != keyword
            else ""
        )
        self.collect.error(
            statement.keyword_span,
            f"{keyword} appears twice; the first is at line {earlier.keyword_span.line}",
            spellings_note + "merge the two into one",
        )
        return False

    # ---- top level

    def _header(self, header: Header) -> None:
        field = HEADER_KEYWORDS.get(header.keyword)
        if field is None:
            self._unknown_keyword(header)
            return
        if not self._first(header):
            return
        path = ("project", field)
        if field != "tags" and isinstance(header.value, Num | Qty | Bool):
            # `VERSION 1.0`: quoting keeps what was written (1.10 is not 1.1)
            span = header.value.span
            written = self.collect.source.text[span.start : span.end]
            self.collect.error(
                span, f"{header.keyword} takes a string", f'write {header.keyword} "{written}"'
            )
            return
        self.inputs.setdefault("project", {})[field] = self._value(header.value, None, path)

    def _block(self, block: Block) -> None:
        keyword = block.keyword
        if keyword in NOT_EXECUTED_BLOCKS:
            self.collect.warn(
                block.keyword_span,
                f"{keyword} is recognised but okto does not execute it; the block has no effect",
                _INSTEAD.get(keyword),
            )
            return
        attribute = BLOCK_KEYWORDS.get(keyword)
        if attribute is None:
            self._unknown_keyword(block)
            return
        if not self._first(block):
            return
        if block.label is not None:
            self.collect.warn(block.label.span, f"the label of {keyword} has no effect here")
        self.collect.locate((attribute,), block.keyword_span)
        if attribute == "control":
            self.control = block
            return
        if attribute == "metrics":
            self.inputs["metrics"] = self._words(block.body, keyword)
            return
        model = OktoConfig.model_fields[attribute].annotation
        self.inputs[attribute] = self._fields(block.body, model, (attribute,), keyword)

    def _unknown_keyword(self, statement: Block | Header) -> None:
        keyword, span = statement.keyword, statement.keyword_span
        if keyword in HEADER_KEYWORDS:
            self.collect.error(span, f'{keyword} takes a value, not a block: {keyword} "..."')
        elif keyword in BLOCK_KEYWORDS or keyword in NOT_EXECUTED_BLOCKS:
            self.collect.error(span, f"{keyword} needs a body in braces: {keyword} {{ ... }}")
        elif keyword.upper() in KEYWORDS:
            self.collect.error(
                span,
                f"unknown keyword '{keyword}'",
                f"keywords are upper case: did you mean {keyword.upper()}?",
            )
        else:
            kind = "block" if isinstance(statement, Block) else "statement"
            home = _home_of(keyword)
            self.collect.error(
                span,
                f"unknown {kind} '{keyword}'{suggestion(keyword, KEYWORDS) if not home else ''}",
                f"{home}: it goes inside that block"
                if home
                else "blocks: " + ", ".join(BLOCK_KEYWORDS),
            )

    def _control(self, block: Block) -> None:
        train = self.inputs.get("train", {})
        env = self.inputs.get("env", {})
        cpu_only = "cpu" in (
            str(train.get("device", "")).lower(),
            str(env.get("accelerator", "")).lower(),
        )
        self.inputs["control"] = ControlBuilder(self.collect, train, cpu_only).build(block.body)

    # ---- bodies

    def _words(self, body: Body, where: str) -> list[str]:
        names = []
        for item in body:
            if isinstance(item, Word | Str):
                self.collect.locate(("metrics", len(names)), item.span)
                names.append(item.name if isinstance(item, Word) else item.value)
            else:
                self.collect.error(
                    item.span, f"{where} lists names, like: {where} {{ loss perplexity }}"
                )
        return names

    def _fields(self, body: Body, model: type[BaseModel], path: Path, where: str) -> dict:
        result: dict[str, Any] = {}
        self._fields_into(result, {}, body, model, path, where)
        return result

    def _fields_into(self, result, seen, body: Body, model, path: Path, where: str) -> None:
        names = spellings(model)
        for item in body:
            if isinstance(item, Field):
                key, key_span, value = item.key, item.key_span, item.value
            elif isinstance(item, SubBlock):
                key, key_span, value = item.name, item.name_span, ObjectValue(item.span, item.body)
            else:
                self._not_a_field(item, names, where)
                continue
            # `params { ... }` and `params: { ... }` alike
            if isinstance(value, ObjectValue) and key in model.flattened:
                self._fields_into(result, seen, value.body, model, path, where)
                continue
            if isinstance(value, ObjectValue) and key in model.not_executed:
                self.collect.warn(key_span, f"{key} inside {where} is recognised but not executed")
                continue
            name = names.get(key)
            if name is None:
                self._unknown_field(key, key_span, names, path, where)
                continue
            if name in seen:
                first_key, first = seen[name]
                self.collect.error(
                    key_span,
                    f"{name} is set twice in {where}; the first is at line {first.line}",
                    f"{first_key} and {key} are two spellings of {name}"
                    if first_key != key
                    else None,
                )
                continue
            seen[name] = key, key_span
            info = model.model_fields[name]
            if (info.json_schema_extra or {}).get("no_effect"):
                self.collect.warn(key_span, f"{key} is accepted but has no effect here")
            result[name] = self._value(value, info.annotation, (*path, name), key)

    def _not_a_field(self, item, names: dict[str, str], where: str) -> None:
        if isinstance(item, Word):
            if item.name in names:
                self.collect.error(
                    item.span, f"'{item.name}' has no value", f"write {item.name}: value"
                )
            elif item.name in UNITS:
                self.collect.error(
                    item.span,
                    f"unexpected '{item.name}' in {where}",
                    f"write the unit right after the number, as in 12{item.name}",
                )
            else:
                self.collect.error(
                    item.span,
                    f"unexpected '{item.name}' in {where}: expected fields written name: value"
                    + suggestion(item.name, names),
                )
        else:
            self.collect.error(item.span, f"{where} holds fields written name: value")

    def _unknown_field(self, key: str, span, names: dict[str, str], path: Path, where: str) -> None:
        message = f"unknown field '{key}' in {where}"
        moved = _MOVED.get((*path, key))
        if moved is not None:
            self.collect.error(span, message, moved)
        elif did_you_mean(key, names) is not None:
            self.collect.error(span, message + suggestion(key, names))
        else:
            self.collect.error(span, message, _home_of(key) if len(path) == 1 else None)

    # ---- values

    def _value(self, node: Value, annotation: Any, path: Path, where: str | None = None) -> Any:
        """`where` names the value in messages; by default its field name."""
        self.collect.locate(path, node.span)
        if isinstance(node, ObjectValue):
            model = model_in(annotation)
            if model is not None:
                return self._fields(node.body, model, path, where or str(path[-1]))
            return self._plain_object(node.body, path, where or str(path[-1]))
        if isinstance(node, ListValue):
            item = list_item(annotation)
            name = where or str(path[-1])
            return [
                self._value(v, item, (*path, i), f"{name}[{i}]") for i, v in enumerate(node.items)
            ]
        return scalar(node)

    def _plain_object(self, body: Body, path: Path, where: str) -> dict:
        result = {}
        seen: dict[str, Span] = {}
        for item in body:
            if isinstance(item, Field):
                key, key_span, value = item.key, item.key_span, item.value
            elif isinstance(item, SubBlock):  # the same as `name: { ... }`
                key, key_span, value = item.name, item.name_span, ObjectValue(item.span, item.body)
            else:
                self.collect.error(item.span, f"{where} holds fields written name: value")
                continue
            if key in seen:
                self.collect.error(
                    key_span,
                    f"{key} is set twice in {where}; the first is at line {seen[key].line}",
                )
                continue
            seen[key] = key_span
            result[key] = self._value(value, None, (*path, key))
        return result


def resolve_value(collect: Collector, node: Value, annotation: Any, path: Path) -> Any:
    """One value read as a field of type `annotation` at `path` would be."""
    return _Resolver(collect)._value(node, annotation, path)


def scalar(node: Num | Qty | Str | Bool | Ident) -> Any:
    """The Python value of a scalar node; a bare name is a string."""
    return node.name if isinstance(node, Ident) else node.value


def _home_of(key: str) -> str | None:
    """Where a field that this block lacks lives, if some block has it."""
    for keyword, attribute in BLOCK_KEYWORDS.items():
        model = model_in(OktoConfig.model_fields[attribute].annotation)
        known = model is not None and (key in spellings(model) or key in model.flattened)
        if known and keyword != "DATA":
            return f"{key} is a field of {keyword}"
    return None


def model_in(annotation: Any) -> type[BaseModel] | None:
    for option in unwrap(annotation):
        if isinstance(option, type) and issubclass(option, BaseModel):
            return option
    return None


def list_item(annotation: Any) -> Any:
    return _contents(annotation, list)


def dict_value(annotation: Any) -> Any:
    return _contents(annotation, dict)


def _contents(annotation: Any, container: type) -> Any:
    """`T` of a `list[T]` or `dict[str, T]` that `annotation` admits, or None."""
    for option in unwrap(annotation):
        if typing.get_origin(option) is container:
            return typing.get_args(option)[-1]
    return None
