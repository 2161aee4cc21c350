"""Running CONTROL rules at the training loop's events.

The loop calls `Controller.fire(event, count, metrics)` after every step
(`on_step_end`, count = step), epoch, evaluation, NaN and plateau. A rule runs
its actions when it is due and its condition holds; a WHEN rule only when its
condition turns true, so its last truth value is kept (and saved with
checkpoints). Nested rules are checked at the same event when their parent
fires. The actions themselves are the trainer's business: the controller
hands them to an object with `get(field)`, `set(field, value)`,
`log(text)`, `save(target, label)` and `stop(reason)`.

A WHEN rule's state is kept under what decides when it fires (its event,
condition and the rules it sits in), not its position: a run resumed with
rules added or removed around it (the STOP that ended the first part, say)
neither fires it again nor hands its state to another rule.
"""

from __future__ import annotations

import hashlib
import math
import string
from collections import Counter
from collections.abc import Mapping
from typing import Protocol

from pydantic import ValidationError

from okto.language.control import (
    METRIC_ALIASES,
    AdjustAction,
    LogAction,
    Rule,
    SaveAction,
    SetAction,
    StopAction,
)
from okto.language.control_builder import train_field_type, whole_number

# Live fields whose unset value (as Actions.get reads it) means "off": moving it by a share
# or down would turn it on at every step (eval_steps 0 -> 1), and clipping stays off.
OFF = {"eval_steps": 0, "save_steps": 0, "gradient_clip": math.inf}
OFF_MEANS = {
    "eval_steps": "evaluation at epoch ends",
    "save_steps": "no step checkpoints",
    "gradient_clip": "no clipping",
}


class Actions(Protocol):
    def get(self, field: str) -> float: ...
    def set(self, field: str, value: float) -> None: ...
    def log(self, text: str) -> None: ...
    def save(self, target: str, label: str | None) -> None: ...
    def stop(self, reason: str) -> None: ...


class Controller:
    def __init__(self, rules: list[Rule], actions: Actions):
        self.rules = rules
        self.actions = actions
        self.was_true: dict[str, bool] = {}  # WHEN rules' last truth value, by `_keys`
        # every rule's key, and (for checkpoints from before keys) its position: by id
        self._keys: dict[int, str] = {}
        self._positions: dict[str, str] = {}
        self._key_rules(rules, "", "")

    def _key_rules(self, rules: list[Rule], prefix: str, position: str) -> None:
        """Key each rule by its trigger (kind, event, interval, condition) under its parent's
        key, numbered among siblings with the same trigger."""
        seen: Counter[str] = Counter()
        for index, rule in enumerate(rules):
            trigger = rule.model_dump_json(include={"kind", "event", "interval", "condition"})
            digest = hashlib.sha1(trigger.encode()).hexdigest()[:12]
            key = f"{prefix}{digest}-{seen[digest]}"
            seen[digest] += 1
            self._keys[id(rule)] = key
            self._positions[f"{position}{index}"] = key
            nested = [action for action in rule.actions if isinstance(action, Rule)]
            self._key_rules(nested, f"{key}.", f"{position}{index}.")

    def fire(self, event: str, count: int, metrics: Mapping[str, object]) -> None:
        # a copy the actions update: what follows a change of the rate reads the new rate
        self._run(self.rules, event, count, dict(metrics))

    def _run(self, rules, event: str, count: int, metrics) -> None:
        for rule in rules:
            key = self._keys[id(rule)]
            if not rule.is_due(event, count):
                continue
            holds = rule.holds(metrics)
            if rule.kind == "when":
                turned_true = holds and not self.was_true.get(key, False)
                self.was_true[key] = holds
                holds = turned_true
            if holds:
                self._act(rule, event, count, metrics)

    def _act(self, rule: Rule, event: str, count: int, metrics) -> None:
        for action in rule.actions:
            if isinstance(action, Rule):
                self._run([action], event, count, metrics)
            elif isinstance(action, SetAction):
                self.actions.set(action.field, action.value)  # checked when the file loaded
                self._reread(action.field, metrics)
            elif isinstance(action, AdjustAction):
                self._adjust(action)
                self._reread(action.field, metrics)
            elif isinstance(action, LogAction):
                self.actions.log(_log_text(action, metrics))
            elif isinstance(action, SaveAction):
                label = _fill(action.label, metrics) if action.label else None
                self.actions.save(action.target, label)
            elif isinstance(action, StopAction):
                self.actions.stop(f"a CONTROL rule ({event}) said STOP")

    def _reread(self, field: str, metrics: dict) -> None:
        """The learning rate, a live field that is also a metric, as an action left it: the
        actions and conditions after it read that (`DECREASE learning_rate BY 50%` then
        `LOG lr` logged the rate from before the decrease)."""
        if field == "learning_rate":
            metrics["lr"] = metrics["learning_rate"] = self.actions.get(field)

    def _adjust(self, action: AdjustAction) -> None:
        """INCREASE or DECREASE a live field. A whole-number field moves by at least 1 (up
        for INCREASE, down for DECREASE) and stays at 1 or more; a value a rate does not
        admit is not set: it goes to 0 where that is allowed (weight_decay), else keeps its
        value (a learning rate of 0 or less), and a log line says so."""
        field, current = action.field, self.actions.get(action.field)
        # INCREASE eval_steps BY 100 from unset gives 100, as it says; a share or a DECREASE
        # of nothing has nothing to move, nor has any change of an infinite threshold
        if OFF.get(field) == current and (
            action.relative or action.kind == "decrease" or math.isinf(current)
        ):
            self.actions.log(
                f"{action.kind.upper()} {field}: {field} is unset ({OFF_MEANS[field]}), so there "
                "is nothing to move; a rule can SET it"
            )
            return
        value = round(action.apply(current), 9)  # 30 + 10% is 33, not 33.000000000000004
        if whole_number(field):
            value = max(1, math.ceil(value) if action.kind == "increase" else math.floor(value))
        for candidate in (value, 0.0):
            try:
                train_field_type(field).validate_python(candidate)
            except ValidationError:
                continue
            if candidate != value:
                self.actions.log(f"{action.kind.upper()} {field}: {value:g} is below 0, set 0")
            self.actions.set(field, candidate)
            return
        self.actions.log(
            f"{action.kind.upper()} {field} would make it {value:g}, which it cannot be: "
            f"kept at {current:g}"
        )

    def state_dict(self) -> dict:
        return {"was_true": dict(self.was_true)}

    def load_state_dict(self, state: dict) -> None:
        """Checkpoints from before trigger keys kept positions ("0", "2.1"): read as the
        rules at those positions now, as they were then."""
        self.was_true = {
            self._positions.get(key, key): value
            for key, value in state.get("was_true", {}).items()
        }


def _log_text(action: LogAction, metrics: Mapping[str, object]) -> str:
    if action.metric is not None:
        value = metrics.get(action.metric)
        return f"{action.metric} = {_format(value) if value is not None else 'not measured yet'}"
    return _fill(action.message or "", metrics)


def _fill(text: str, metrics: Mapping[str, object]) -> str:
    """`{step}`, `{epoch}`, `{loss:.3f}` ... filled in from the metrics; names not measured
    (yet) and formats their value does not take are kept as written, never a crash mid-run."""
    try:
        parts = list(string.Formatter().parse(text))
    except ValueError:  # unbalanced braces: plain text
        return text
    out = []
    for literal, name, spec, _ in parts:
        out.append(literal)
        if name is not None:
            out.append(_filled(name, spec, metrics.get(METRIC_ALIASES.get(name, name))))
    return "".join(out)


def _filled(name: str, spec: str, value) -> str:
    if value is not None:
        try:
            return format(value, spec) if spec else _format(value)
        except (TypeError, ValueError):
            pass
    return "{" + name + (":" + spec if spec else "") + "}"


def _format(value) -> str:
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:.4g}"
    return str(value)


def metric_names(rules: list[Rule]) -> set[str]:
    """Every metric the rules' conditions read, nested rules included."""
    names: set[str] = set()

    def condition(node) -> None:
        if node is None:
            return
        if hasattr(node, "metric"):
            names.add(node.metric)
        for child in getattr(node, "conditions", ()):
            condition(child)

    def walk(rule: Rule) -> None:
        condition(rule.condition)
        for action in rule.actions:
            if isinstance(action, Rule):
                walk(action)

    for rule in rules:
        walk(rule)
    return names
