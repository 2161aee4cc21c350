"""CONTROL rules as typed objects, for the training loop to execute.

A `Rule` says when it is checked (`event`, every `interval`-th time), what
must hold (`condition`) and what happens (`actions`, which may hold nested
rules, checked at the same event when the parent fires). How the loop uses
them:

- At each event it calls `rule.is_due(event, count)` for the top-level rules,
  where `count` is the step number for `on_step_end` and the epoch number for
  `on_epoch_end` (the other events pass their own running count).
- `rule.holds(metrics)` evaluates the condition against the current metrics
  (see `METRICS` for names and units). A metric missing from `metrics`, for
  instance `val_loss` before the first evaluation or the GPU metrics on a CPU,
  makes its comparison false.
- `if` rules run their actions whenever they hold. `when` rules run them only
  when the condition turns true (it was false, or never checked, last time):
  the loop keeps the previous truth value per rule.
- Actions: `SetAction` (assign a live TRAIN field), `AdjustAction` (increase
  or decrease one, by an absolute amount or, when `relative`, by a fraction of
  its value), `LogAction`, `SaveAction`, `StopAction`, and nested `Rule`s.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, WithJsonSchema

from okto.language.quantities import Kind, Quantity

Event = Literal["on_step_end", "on_epoch_end", "on_eval", "on_nan", "on_plateau"]
EVENTS: tuple[Event, ...] = ("on_step_end", "on_epoch_end", "on_eval", "on_nan", "on_plateau")
EVENT_HELP: dict[Event, str] = {
    "on_step_end": "after every optimizer step",
    "on_epoch_end": "after every epoch (and its evaluation, when TRAIN.eval_steps is unset)",
    "on_eval": "after every evaluation on the validation set",
    "on_nan": "when the loss is NaN or infinite",
    "on_plateau": "when the validation loss stopped improving (TRAIN.early_stopping patience)",
}


@dataclass(frozen=True)
class Metric:
    """A value conditions can test. `kind` says which quantities it compares
    with: plain numbers always, and quantities of this kind."""

    kind: Kind | Literal["number"]
    unit: str
    help: str
    device: bool = False  # read from the GPU, absent on a CPU
    whole: bool = False  # an int, not a float: what a LOG format like {step:d} formats
    # The values it can take (in the kind's base unit), so that a condition that can never
    # hold, or always holds (accuracy > 90, loss >= 0), is found at check time.
    low: float = 0.0
    high: float = math.inf


METRICS: dict[str, Metric] = {
    "step": Metric("count", "", "optimizer steps done", whole=True),
    "epoch": Metric("count", "", "epochs done (1 after the first)", whole=True),
    "loss": Metric("number", "", "training loss of the last step"),
    "val_loss": Metric("number", "", "loss on the validation set, at the last evaluation"),
    "perplexity": Metric(
        "number", "", "exp(val_loss), or exp(loss) without a validation set", low=1.0
    ),
    "accuracy": Metric(
        "number", "", "next-token accuracy at the last evaluation, 0 to 1", high=1.0
    ),
    "lr": Metric("number", "", "the current learning rate"),
    "grad_norm": Metric("number", "", "gradient norm before clipping"),
    "tokens_per_second": Metric("number", "", "training throughput"),
    "gpu_memory": Metric("size", "bytes", "free memory on the GPU", device=True, whole=True),
    "gpu_usage": Metric(
        "percent", "%", "GPU utilisation, 0 to 100", device=True, whole=True, high=100.0
    ),
    "gpu_temperature": Metric(
        "number", "°C", "GPU temperature", device=True, whole=True, low=-math.inf
    ),
}
METRIC_ALIASES = {"learning_rate": "lr", "LR": "lr"}

LIVE_FIELDS: dict[str, str] = {
    "learning_rate": "from the next step; the scheduler continues from the new value",
    "weight_decay": "from the next step",
    "gradient_clip": "from the next step",
    "batch_size": "from the next batch (the batches prepared ahead are remade)",
    "gradient_accumulation": "from the next optimizer step",
    "logging_steps": "at once",
    "eval_steps": "at once",
    "save_steps": "at once",
}
"""TRAIN fields that SET, INCREASE and DECREASE may change while training
runs, and when the change takes effect. Changing any other field is a
check-time error."""
SET_ALIASES = {"LR": "learning_rate", "lr": "learning_rate"}


def _quantity_text(value: object) -> object:
    """Read quantity text (`"12GB"`) back from JSON."""
    return Quantity.parse(value) if isinstance(value, str) else value


Threshold = Annotated[
    Quantity | float,
    BeforeValidator(_quantity_text),
    PlainSerializer(lambda v: str(v) if isinstance(v, Quantity) else v),
    WithJsonSchema(
        {"anyOf": [{"type": "number"}, {"type": "string", "description": "a quantity"}]}
    ),
]

COMPARE = {
    ">": operator.gt,
    "<": operator.lt,
    ">=": operator.ge,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}


def fixed_truth(op: str, threshold: float, low: float, high: float) -> bool | None:
    """Whether `value op threshold` holds for every value from low to high (True), for
    none (False), or depends on the value (None)."""
    if op in ("==", "!="):
        return None if low <= threshold <= high else op == "!="
    # a one-sided comparison changes its truth at most once between low and high
    at_low, at_high = (COMPARE[op](end, threshold) for end in (low, high))
    return at_low if at_low == at_high else None


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Comparison(_Frozen):
    """`metric op value`, e.g. `loss > 2.0` or `gpu_memory < 12GB`."""

    kind: Literal["compare"] = "compare"
    metric: str
    op: Literal[">", "<", ">=", "<=", "==", "!="]
    value: Threshold

    def evaluate(self, metrics: Mapping[str, object]) -> bool:
        actual = metrics.get(self.metric)
        if actual is None:
            return False
        threshold = self.value.base if isinstance(self.value, Quantity) else self.value
        try:
            return bool(COMPARE[self.op](float(actual), threshold))
        except (TypeError, ValueError):
            return False


class AllOf(_Frozen):
    """Conditions joined with AND."""

    kind: Literal["all"] = "all"
    conditions: list[Condition]

    def evaluate(self, metrics: Mapping[str, object]) -> bool:
        return all(c.evaluate(metrics) for c in self.conditions)


class AnyOf(_Frozen):
    """Conditions joined with OR."""

    kind: Literal["any"] = "any"
    conditions: list[Condition]

    def evaluate(self, metrics: Mapping[str, object]) -> bool:
        return any(c.evaluate(metrics) for c in self.conditions)


Condition = Annotated[Comparison | AllOf | AnyOf, Field(discriminator="kind")]


class SetAction(_Frozen):
    """`SET field = value`: assign a live TRAIN field (see `LIVE_FIELDS`)."""

    kind: Literal["set"] = "set"
    field: str
    value: int | float | bool | str


class AdjustAction(_Frozen):
    """`INCREASE|DECREASE field BY amount`. With `relative`, `amount` is a
    fraction of the current value (`BY 50%` -> 0.5); otherwise it is added
    or subtracted as is."""

    kind: Literal["increase", "decrease"]
    field: str
    amount: float
    relative: bool

    def apply(self, current: float) -> float:
        step = current * self.amount if self.relative else self.amount
        return current + step if self.kind == "increase" else current - step


class LogAction(_Frozen):
    """`LOG "text"` prints `message` (with `{step}`, `{epoch}` and metric
    names filled in); `LOG metric` prints that metric's value."""

    kind: Literal["log"] = "log"
    message: str | None = None
    metric: str | None = None


class SaveAction(_Frozen):
    """`SAVE model`, `SAVE checkpoint` or `SAVE "label"` (a model saved under
    that name; `{step}` and `{epoch}` are filled in)."""

    kind: Literal["save"] = "save"
    target: Literal["model", "checkpoint"]
    label: str | None = None


class StopAction(_Frozen):
    """`STOP` or `STOP_TRAINING`: end training after this step, saving as at
    a normal end."""

    kind: Literal["stop"] = "stop"


class Rule(_Frozen):
    """One CONTROL statement: IF, WHEN, EVERY or an event block."""

    kind: Literal["if", "when", "every", "event"]
    event: Event
    interval: int | None = None
    condition: Condition | None = None
    actions: list[Action]

    def is_due(self, event: Event, count: int) -> bool:
        """Whether the rule is checked at `event`, the `count`-th of its kind."""
        return event == self.event and (self.interval is None or count % self.interval == 0)

    def holds(self, metrics: Mapping[str, object]) -> bool:
        return self.condition is None or self.condition.evaluate(metrics)


Action = Annotated[
    SetAction | AdjustAction | LogAction | SaveAction | StopAction | Rule,
    Field(discriminator="kind"),
]

AllOf.model_rebuild()
AnyOf.model_rebuild()
Rule.model_rebuild()
