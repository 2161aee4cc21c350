"""CONTROL's actions at run time against a stand-in for the trainer, and the stop signals."""

from __future__ import annotations

import os
import signal

import pytest

import okto
from okto.language.control import LogAction, Rule
from okto.training.control import Controller
from okto.training.signals import StopSignals, Terminated


class Fields:
    """The trainer's side of the rules: live fields, and the log lines they write."""

    def __init__(self, **values):
        self.values, self.lines = dict(values), []

    def get(self, field):
        return self.values[field]

    def set(self, field, value):
        self.values[field] = value

    def log(self, text):
        self.lines.append(text)

    def save(self, target, label):
        raise AssertionError("no SAVE here")

    def stop(self, reason):
        raise AssertionError("no STOP here")


def fire(action: str, **values) -> Fields:
    rules = okto.parse(f"CONTROL {{ on_step_end {{ {action} }} }}", "t.okt").config.control
    fields = Fields(**values)
    Controller(rules, fields).fire("on_step_end", 1, {})
    return fields


@pytest.mark.parametrize(
    ("action", "before", "after"),
    [
        ("INCREASE batch_size BY 10%", 4, 5),  # it used to round back to 4, forever
        ("DECREASE batch_size BY 10%", 4, 3),
        ("INCREASE batch_size BY 50%", 4, 6),
        ("INCREASE batch_size BY 10%", 30, 33),  # not 34: 30 x 1.1 is 33.000000000000004
        ("DECREASE batch_size BY 90%", 4, 1),  # at least 1
        ("INCREASE batch_size BY 2", 4, 6),
        ("DECREASE learning_rate BY 50%", 1e-3, 5e-4),
    ],
)
def test_adjustments_move_the_field(action, before, after):
    field = action.split()[1]
    fields = fire(action, **{field: before})
    assert fields.values[field] == pytest.approx(after) and not fields.lines


def test_what_follows_a_change_of_the_rate_reads_the_new_rate():
    """`DECREASE learning_rate BY 50%` then `LOG lr` (examples/control-rules.okt) logged the
    rate from before the decrease, and a later rule's condition on lr read it too."""
    text = """CONTROL { on_plateau {
        DECREASE learning_rate BY 50%
        LOG lr
        LOG "now {lr:g}"
        IF lr < 0.0008 { LOG "halved" }
    } }"""
    rules = okto.parse(text, "t.okt").config.control
    fields = Fields(learning_rate=1e-3)
    Controller(rules, fields).fire("on_plateau", 1, {"lr": 1e-3, "learning_rate": 1e-3})
    assert fields.lines == ["lr = 0.0005", "now 0.0005", "halved"]


def test_a_value_the_field_cannot_take_is_not_set():
    fields = fire("DECREASE learning_rate BY 0.001", learning_rate=5e-4)
    assert fields.values["learning_rate"] == 5e-4  # it used to become 0 and stop learning
    assert fields.lines == [
        "DECREASE learning_rate would make it -0.0005, which it cannot be: kept at 0.0005"
    ]
    fields = fire("DECREASE weight_decay BY 0.05", weight_decay=0.01)
    assert fields.values["weight_decay"] == 0.0
    assert fields.lines == ["DECREASE weight_decay: -0.04 is below 0, set 0"]


@pytest.mark.parametrize(
    ("action", "value", "means"),
    [
        ("DECREASE eval_steps BY 50%", 0, "evaluation at epoch ends"),
        ("INCREASE save_steps BY 10%", 0, "no step checkpoints"),
        ("DECREASE gradient_clip BY 10%", float("inf"), "no clipping"),
        ("INCREASE gradient_clip BY 1", float("inf"), "no clipping"),
    ],
)
def test_moving_a_field_that_is_off_leaves_it_off(action, value, means):
    """Unset eval_steps read as 0 and became 1: an evaluation at every step (a checkpoint
    for save_steps); unset clipping became inf, or was 'kept at inf' after 'nan'."""
    kind, field = action.split()[:2]
    fields = fire(action, **{field: value})
    assert fields.values[field] == value
    assert fields.lines == [
        f"{kind} {field}: {field} is unset ({means}), so there is nothing to move; "
        "a rule can SET it"
    ]
    assert fire("INCREASE eval_steps BY 100", eval_steps=0).values["eval_steps"] == 100


def test_a_metric_alias_in_braces_is_filled_in():
    """{LR} and {learning_rate} (the aliases conditions take) were printed as written."""
    rule = Rule(
        kind="event", event="on_step_end", actions=[LogAction(message="{LR:g} {learning_rate:g}")]
    )
    fields = Fields()
    Controller([rule], fields).fire("on_step_end", 7, {"lr": 0.001})
    assert fields.lines == ["0.001 0.001"]


def test_a_log_format_its_value_does_not_take_is_kept_as_written():
    """Rules not built from a file (a Program from JSON) are not checked: a LOG format that
    did not fit its value was a ValueError that ended the run."""
    rule = Rule(
        kind="event", event="on_step_end", actions=[LogAction(message="{loss:d} {step:03d}")]
    )
    fields = Fields()
    Controller([rule], fields).fire("on_step_end", 7, {"loss": 2.5, "step": 7})
    assert fields.lines == ["{loss:d} 007"]


def _steps(text: str, steps: range, state: dict | None = None) -> tuple[list[str], dict]:
    """The LOG lines of `text`'s rules over `steps` (after loading `state`), and their state."""
    fields = Fields()
    controller = Controller(okto.parse(text, "t.okt").config.control, fields)
    if state is not None:
        controller.load_state_dict(state)
    for step in steps:
        controller.fire("on_step_end", step, {"step": step})
    return fields.lines, controller.state_dict()


def test_when_rules_in_one_block_keep_their_own_state():
    """Nested WHEN rules shared one state: the second read the first's truth, so the first
    fired again and the second never did."""
    text = """CONTROL { on_step_end {
        WHEN step >= 2 { LOG "a {step}" }
        WHEN step >= 3 { LOG "b {step}" }
    } }"""
    assert _steps(text, range(1, 6))[0] == ["a 2", "b 3"]


def test_a_when_rule_keeps_its_state_when_rules_around_it_change():
    """Resumed without the STOP that ended the first part (as the tests and docs do), a WHEN
    rule that had fired was at another position: it fired a second time."""
    when = 'WHEN step >= 2 { LOG "at {step}" }'
    first, state = _steps(f"CONTROL {{ IF step == 4 {{ STOP }} {when} }}", range(1, 4))
    assert first == ["at 2"]
    assert _steps(f"CONTROL {{ {when} }}", range(4, 7), state)[0] == []
    # another WHEN rule put where it stood does not take its state: it fires when it turns true
    other = 'WHEN step >= 5 { LOG "five" }'
    assert _steps(f"CONTROL {{ {other} {when} }}", range(4, 7), state)[0] == ["five"]


def test_when_states_of_checkpoints_keyed_by_position_still_load():
    """Checkpoints written before the keys held each WHEN rule's position."""
    text = 'CONTROL { IF step == 9 { STOP } WHEN step >= 2 { LOG "at {step}" } }'
    assert _steps(text, range(4, 6), {"was_true": {"1": True}})[0] == []


def test_a_second_sigterm_in_the_loop_ends_at_once_with_its_own_code():
    """It raised KeyboardInterrupt, which the command reports as Ctrl-C (130), not 143."""
    said = []
    with StopSignals(said.append) as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.received == signal.SIGTERM and said == ["SIGTERM"]
        with pytest.raises(Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
    assert Terminated.exit_code == 143
