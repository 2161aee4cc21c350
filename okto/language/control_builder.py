"""CONTROL block syntax -> rule data for `okto.language.control.Rule`, with
the checks the spec wants at check time rather than mid-run: known metrics,
values of the metric's kind, SET only on live TRAIN fields, whole amounts for
whole-number fields, EVERY units that fit where they stand."""

from __future__ import annotations

import dataclasses
import functools
import math
import string
from typing import Any

from pydantic import TypeAdapter, ValidationError

from okto.language.collect import Collector, Path
from okto.language.config import TrainConfig, spellings
from okto.language.control import (
    EVENTS,
    LIVE_FIELDS,
    METRIC_ALIASES,
    METRICS,
    SET_ALIASES,
    Event,
    fixed_truth,
)
from okto.language.diagnostics import did_you_mean, suggestion
from okto.language.fieldtypes import unwrap
from okto.language.quantities import EXAMPLES, Quantity
from okto.language.syntax import (
    AdjustStatement,
    AllOf,
    AnyOf,
    Body,
    Bool,
    Comparison,
    Conditional,
    Every,
    Field,
    Ident,
    Item,
    LogStatement,
    Num,
    Qty,
    SaveStatement,
    SetStatement,
    StopStatement,
    Str,
    SubBlock,
    VerbStatement,
    Word,
)
from okto.language.validation import explain

_UNIT_EVENTS: dict[str, Event] = {
    "steps": "on_step_end",
    "step": "on_step_end",
    "epochs": "on_epoch_end",
    "epoch": "on_epoch_end",
}
_TRAIN_SPELLINGS = {**spellings(TrainConfig), **SET_ALIASES}
_ACTION_WORDS = {"SET", "INCREASE", "DECREASE", "LOG", "SAVE", "STOP", "STOP_TRAINING"}
_MISPLACED = {"validate_every": "to evaluate every N steps, set eval_steps in TRAIN"}
_OTHER_FORMS = {
    # other OktoScript tools' event
    "ON_MEMORY_LOW": "write WHEN gpu_memory < 2GB { ... }: it fires as free memory runs low",
    "ELSE": "there is no ELSE: write a second rule with the opposite condition",
}
"""Hints for the blocks of other languages' rules, by their upper-case name."""


def _stop_reason(item: Item) -> str | None:
    """The text of an item that reads as a reason given to the STOP before it
    (`STOP "loss exploded"`): a string, or a bare word other than a lower-case action."""
    if isinstance(item, Str):
        return item.value
    if isinstance(item, Word) and item.name.upper() not in _ACTION_WORDS:
        return item.name
    return None


class ControlBuilder:
    """Builds the rules of one CONTROL block. `train` is the TRAIN block's
    input (to judge DECREASE amounts); `cpu_only` says whether the file
    pins training to the CPU (rules on GPU metrics then never fire)."""

    def __init__(self, collect: Collector, train: dict[str, Any], cpu_only: bool):
        self.collect = collect
        self.train = train
        self.cpu_only = cpu_only

    def build(self, body: Body) -> list[dict]:
        rules: list[dict] = []
        for item in self._without_statement_fields(body):
            rule = self._top_level(item, ("control", len(rules)))
            if rule is not None:
                rules.append(rule)
        return rules

    # ---- statements

    def _top_level(self, item: Item, path: Path) -> dict | None:
        if isinstance(item, SubBlock):
            if item.name not in EVENTS:
                hint = _OTHER_FORMS.get(item.name.upper(), "events: " + ", ".join(EVENTS))
                self.collect.error(
                    item.name_span,
                    f"unknown event '{item.name}'{suggestion(item.name, EVENTS)}",
                    hint,
                )
                return None
            return self._rule(
                item,
                path,
                {"kind": "event", "event": item.name},
                self._actions(item.body, item.name, path),
            )
        if isinstance(item, Conditional | Every):
            return self._action(item, "on_step_end", path, top_level=True)
        if isinstance(item, VerbStatement):
            self._inference_only(item)
            return None
        if isinstance(item, Field):
            self.collect.error(
                item.key_span,
                f"CONTROL holds rules, not fields: '{item.key}' is not one",
                _MISPLACED.get(item.key),
            )
            return None
        self.collect.error(
            item.span,
            "expected a rule here: IF, WHEN, EVERY or an event block such as on_epoch_end { ... }",
            "actions (SET, LOG, SAVE, STOP, ...) go inside a rule",
        )
        return None

    def _actions(self, body: Body, event: Event, path: Path) -> list[dict]:
        actions: list[dict] = []
        previous = None
        for item in self._without_statement_fields(body):
            reason = _stop_reason(item) if isinstance(previous, StopStatement) else None
            if reason is not None:
                found = f'string "{reason}"' if isinstance(item, Str) else f"'{reason}'"
                self.collect.error(
                    item.span,
                    f"{previous.keyword} takes no argument: found {found}",
                    f'to log a reason, write LOG "{reason}" before {previous.keyword}',
                )
            else:
                action = self._action(item, event, (*path, "actions", len(actions)))
                if action is not None:
                    actions.append(action)
            previous = item
        return actions

    def _action(self, item: Item, event: Event, path: Path, top_level: bool = False) -> dict | None:
        if isinstance(item, Conditional):
            condition = self._condition(item.condition)
            head = {"kind": item.keyword.lower(), "event": event, "condition": condition}
            actions = self._actions(item.body, event, path)
            return None if condition is None else self._rule(item, path, head, actions)
        if isinstance(item, Every):
            return self._every(item, event, path, top_level)
        if isinstance(item, SetStatement):
            return self._located(path, item, self._set(item))
        if isinstance(item, AdjustStatement):
            return self._located(path, item, self._adjust(item))
        if isinstance(item, LogStatement):
            return self._located(path, item, self._log(item))
        if isinstance(item, SaveStatement):
            return self._located(path, item, self._save(item))
        if isinstance(item, StopStatement):
            return self._located(path, item, {"kind": "stop"})
        if isinstance(item, VerbStatement):
            self._inference_only(item)
            return None
        if isinstance(item, SubBlock) and item.name in EVENTS:
            self.collect.error(item.name_span, f"{item.name} goes at the top level of CONTROL")
            return None
        hint = None
        if isinstance(item, Word) and item.name.upper() in _ACTION_WORDS:
            hint = f"keywords are upper case: {item.name.upper()}"
        elif isinstance(item, SubBlock):
            hint = _OTHER_FORMS.get(item.name.upper())
        self.collect.error(
            item.span,
            "expected an action (SET, INCREASE, DECREASE, LOG, SAVE, STOP) "
            "or a rule (IF, WHEN, EVERY)",
            hint,
        )
        return None

    def _rule(self, item, path: Path, head: dict, actions: list[dict]) -> dict:
        return self._located(path, item, {**head, "actions": actions})

    def _located(self, path: Path, item, action: dict | None) -> dict | None:
        if action is not None:
            self.collect.locate(path, item.span)
        return action

    def _every(self, item: Every, event: Event, path: Path, top_level: bool) -> dict | None:
        interval = _whole_count(item.count)
        if interval is None:
            self.collect.error(item.count.span, "EVERY needs a whole number above 0")
            return None
        unit_event = _UNIT_EVENTS.get(item.unit)
        if unit_event is None:
            self.collect.error(item.unit_span, f"EVERY counts steps or epochs, not '{item.unit}'")
            return None
        if not top_level and unit_event != event:
            self.collect.error(
                item.unit_span,
                f"EVERY {interval} {item.unit} cannot be inside a rule checked {event}",
                "put it at the top level of CONTROL",
            )
            return None
        head = {"kind": "every", "event": unit_event, "interval": interval}
        return self._rule(item, path, head, self._actions(item.body, unit_event, path))

    def _without_statement_fields(self, body: Body) -> list[Item]:
        """`body` less the fields that follow a verb or STOP on its line (the spec's
        `REPLACE with_message: "..."`): they belong to that statement. A verb has no effect
        here anyway (its warning says so); STOP runs without them, which a warning says."""
        kept: list[Item] = []
        owner, line = None, None
        for item in body:
            if owner is not None and isinstance(item, Field) and item.span.line == line:
                line = item.span.end_line
                if isinstance(owner, StopStatement):
                    self.collect.warn(
                        item.key_span,
                        f"'{item.key}' has no effect: {owner.keyword} takes no fields",
                    )
                continue
            owner = item if isinstance(item, VerbStatement | StopStatement) else None
            line = item.span.end_line
            kept.append(item)
        return kept

    def _inference_only(self, item: VerbStatement) -> None:
        self.collect.warn(
            item.span,
            f"{item.verb} has no effect in training: it is an inference-time action",
        )

    # ---- conditions

    def _condition(self, node) -> dict | None:
        if isinstance(node, AllOf | AnyOf):
            parts = [self._condition(operand) for operand in node.operands]
            if None in parts:
                return None
            return {"kind": "all" if isinstance(node, AllOf) else "any", "conditions": parts}
        assert isinstance(node, Comparison)
        metric = self._metric(node.metric, node.metric_span)
        if metric is None:
            return None
        value = self._threshold(metric, node.value)
        if value is None:
            return None
        self._check_reachable(metric, node, value)
        if METRICS[metric].device:
            severity = "warning" if self.cpu_only else "note"
            where = "this file trains on the CPU, so" if self.cpu_only else "on a CPU-only machine"
            self.collect.report(
                severity,
                node.metric_span,
                f"{metric} is read from the GPU: {where} this rule never fires",
            )
        return {"kind": "compare", "metric": metric, "op": node.op, "value": value}

    def _check_reachable(self, metric: str, node: Comparison, value: float | Quantity) -> None:
        """Warn about a comparison that holds for no value the metric takes, or for all."""
        info = METRICS[metric]
        threshold = value.base if isinstance(value, Quantity) else value
        truth = fixed_truth(node.op, threshold, info.low, info.high)
        if truth is None:
            return
        what = f"{metric} {node.op} {_written(node.value)}"
        hint = None
        if not truth and info.high == 1 and 1 < threshold <= 100:
            hint = f"{metric} is a fraction: write {metric} {node.op} {threshold / 100:g}"
        verdict = "always holds" if truth else "never holds"
        self.collect.warn(node.span, f"{what} {verdict}: {metric} is {_range_words(metric)}", hint)

    def _metric(self, name: str, span) -> str | None:
        metric = METRIC_ALIASES.get(name, name)
        if metric not in METRICS:
            self.collect.error(
                span,
                f"unknown metric '{name}'{suggestion(name, METRICS)}",
                "metrics: " + ", ".join(METRICS),
            )
            return None
        return metric

    def _threshold(self, metric: str, node) -> float | Quantity | None:
        kind = METRICS[metric].kind
        if isinstance(node, Str):
            try:
                node = _unquoted(node)
            except ValueError:
                self.collect.error(
                    node.span, f'compare {metric} with {_expected(kind)}, not "{node.value}"'
                )
                return None
        if isinstance(node, Num):
            if kind == "size":
                self.collect.error(node.span, f"{metric} is a size: write a unit, like 12GB")
                return None
            return node.value
        if isinstance(node, Qty):
            if node.value.kind != kind:
                what = "a plain number" if kind == "number" else f"a {kind}"
                hint = None
                if node.value.kind == "percent" and METRICS[metric].high == 1:
                    hint = f"{metric} is a fraction from 0 to 1: write {node.value.fraction:g}"
                self.collect.error(
                    node.span, f"{metric} is {what}, but {node.value} is a {node.value.kind}", hint
                )
                return None
            return node.value
        self.collect.error(node.span, f"compare {metric} with {_expected(kind)}")
        return None

    # ---- actions

    def _train_field(self, name: str, span, verb: str) -> str | None:
        field = _TRAIN_SPELLINGS.get(name)
        if field is None:
            self.collect.error(
                span,
                f"unknown TRAIN field '{name}'{suggestion(name, LIVE_FIELDS)}",
                f"{verb} can change: " + ", ".join(LIVE_FIELDS),
            )
            return None
        if field not in LIVE_FIELDS:
            self.collect.error(
                span,
                f"{verb} cannot change {field} while training runs",
                f"{verb} can change: " + ", ".join(LIVE_FIELDS),
            )
            return None
        return field

    def _set(self, item: SetStatement) -> dict | None:
        field = self._train_field(item.target, item.target_span, "SET")
        if field is None:
            return None
        if not isinstance(item.value, Str | Num | Qty | Bool | Ident):
            self.collect.error(item.value.span, f"SET {field} needs a single value")
            return None
        raw = item.value.name if isinstance(item.value, Ident) else item.value.value
        try:
            value = train_field_type(field).validate_python(raw)
        except ValidationError as error:
            message, hint = explain(error.errors()[0])
            self.collect.error(item.value.span, f"SET {field}: {message}", hint)
            return None
        return {"kind": "set", "field": field, "value": value}

    def _adjust(self, item: AdjustStatement) -> dict | None:
        verb = item.direction
        field = self._train_field(item.target, item.target_span, verb)
        if field is None:
            return None
        if isinstance(item.amount, Str):
            try:
                item = dataclasses.replace(item, amount=_unquoted(item.amount))
            except ValueError:
                self.collect.error(
                    item.amount.span,
                    f'{verb} BY takes a number or a percentage, like 50%, not "{item.amount.value}"',
                )
                return None
        amount, relative = item.amount.value, isinstance(item.amount, Qty)
        if relative:
            if amount.kind != "percent":
                self.collect.error(
                    item.amount.span,
                    f"{verb} BY takes a number or a percentage, not a {amount.kind}",
                )
                return None
            amount = amount.fraction
        if amount <= 0:
            self.collect.error(item.amount.span, f"{verb} BY needs an amount above 0")
            return None
        if not relative and whole_number(field) and not float(amount).is_integer():
            self.collect.error(
                item.amount.span,
                f"{field} is a whole number: {verb} BY {amount:g} would leave a fraction",
                f"write a whole number, or a percentage: {verb} {field} BY 50%",
            )
            return None
        if verb == "DECREASE":
            self._check_decrease(item, field, amount, relative)
        return {"kind": verb.lower(), "field": field, "amount": amount, "relative": relative}

    def _check_decrease(self, item: AdjustStatement, field: str, amount: float, relative: bool):
        if relative:
            if amount >= 1:
                self.collect.warn(
                    item.amount.span, f"DECREASE BY {item.amount.value} takes {field} to 0"
                )
            return
        current = self.train.get(field, TrainConfig.model_fields[field].default)
        if isinstance(current, int | float) and amount >= current:
            # An amount below 1 reads as a fraction meant relative (BY 0.5: BY 50%); one of 1
            # or more has no percentage that keeps the field above 0.
            percent = f"{amount * 100:g}%" if amount < 1 else "50%"
            self.collect.warn(
                item.amount.span,
                f"DECREASE {field} BY {amount:g} subtracts {amount:g} from {current:g}, "
                "leaving 0 or less",
                f"for a relative change write a percentage: DECREASE {field} BY {percent}",
            )

    def _log(self, item: LogStatement) -> dict | None:
        if isinstance(item.value, Str):
            problem = _unformattable(item.value.value)
            if problem is not None:
                self.collect.error(item.value.span, problem)
                return None
            self._check_placeholders("LOG", item.value)
            return {"kind": "log", "message": item.value.value}
        if isinstance(item.value, Ident):
            metric = self._metric(item.value.name, item.value.span)
            return None if metric is None else {"kind": "log", "metric": metric}
        self.collect.error(
            item.value.span, 'LOG takes a string or a metric name: LOG "text", LOG loss'
        )
        return None

    def _save(self, item: SaveStatement) -> dict | None:
        if isinstance(item.value, Ident) and item.value.name in ("model", "checkpoint"):
            return {"kind": "save", "target": item.value.name}
        if isinstance(item.value, Str):
            self._check_placeholders("SAVE", item.value)
            return {"kind": "save", "target": "model", "label": item.value.value}
        self.collect.error(item.value.span, 'SAVE takes model, checkpoint or a "label"')
        return None

    def _check_placeholders(self, verb: str, text: Str) -> None:
        """Warn about a `{name}` that looks like a misspelt metric: the run prints it as
        written. Braces around other words are the text's own."""
        for name in _placeholders(text.value):
            if name not in FILLED:
                match = did_you_mean(name, FILLED)
                if match is not None:
                    self.collect.warn(
                        text.span,
                        f"{verb}: {{{name}}} is not a metric, so it stays as written "
                        f"(did you mean {{{match}}}?)",
                    )


FILLED = {**{name: name for name in METRICS}, **METRIC_ALIASES}
"""The names a LOG message or SAVE label fills in (`{loss}`), and the metric each is."""


@functools.cache
def train_field_type(field: str) -> TypeAdapter:
    """What a TRAIN field accepts, to check a value a rule would give it."""
    return TypeAdapter(TrainConfig.model_fields[field].rebuild_annotation())


@functools.cache
def whole_number(field: str) -> bool:
    """Whether a TRAIN field holds whole numbers: its type admits int, not float."""
    options = unwrap(TrainConfig.model_fields[field].annotation)
    return int in options and float not in options


def _placeholders(text: str) -> list[str]:
    """The names in `text`'s braces (`{loss:.3f}` -> loss); none when the braces do not
    pair up (the run prints such text as it is)."""
    try:
        return [name for _, name, _, _ in string.Formatter().parse(text) if name]
    except ValueError:
        return []


def _unformattable(message: str) -> str | None:
    """What is wrong with a LOG message's `{metric:format}` that cannot format that metric
    (`{loss:d}`: the loss is not a whole number), said before the run rather than as a
    crash mid-run; None when every format fits. Other braces are the message's own text."""
    try:
        parts = list(string.Formatter().parse(message))
    except ValueError:
        return None
    for _, name, spec, _ in parts:
        metric = FILLED.get(name) if name else None
        if not spec or metric is None:
            continue
        whole = METRICS[metric].whole
        try:
            format(1 if whole else 1.5, spec)
        except ValueError as error:
            what = "a whole number" if whole else "a decimal number"
            return f"LOG: {{{name}:{spec}}} cannot format {metric}, {what} ({error})"
    return None


def _unquoted(node: Str) -> Num | Qty:
    """A quoted threshold or amount as the node it spells unquoted: public files write
    `gpu_memory < "12GB"`, and config fields take quoted quantities too."""
    quantity = Quantity.parse(node.value)
    if quantity.unit == "":
        return Num(node.span, quantity.value)
    return Qty(node.span, quantity)


def _range_words(metric: str) -> str:
    info = METRICS[metric]
    unit = "%" if info.kind == "percent" else ""
    if info.high == math.inf:
        return f"{info.low:g}{unit} or more"
    return f"from {info.low:g}{unit} to {info.high:g}{unit}"


def _written(node) -> str:
    """A threshold as the file wrote it (quotes and all)."""
    if isinstance(node, Str):
        return f'"{node.value}"'
    if isinstance(node, Qty):
        return str(node.value)
    return f"{node.value:g}" if isinstance(node.value, float) else str(node.value)


def _expected(kind: str) -> str:
    """What a condition on a metric of `kind` compares with, in words."""
    if kind == "number":
        return "a number"
    example = EXAMPLES[kind]
    return f"a size, like {example}" if kind == "size" else f"a number or a {kind}, like {example}"


def _whole_count(node: Num | Qty) -> int | None:
    """The count of `EVERY n`: a whole number above 0 (`1K` counts too)."""
    value = node.value.base if isinstance(node, Qty) and node.value.kind == "count" else node.value
    if isinstance(value, Quantity) or not float(value).is_integer() or value < 1:
        return None
    return int(value)
