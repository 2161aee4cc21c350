"""CONTROL (spec section 4): rules as typed objects, their evaluation, and
the check-time errors and warnings."""

from __future__ import annotations

import pytest

from okto.cli import main
from okto.language import InvalidProgram, apply_overrides
from okto.language.control import (
    AdjustAction,
    AllOf,
    AnyOf,
    Comparison,
    LogAction,
    Rule,
    SaveAction,
    SetAction,
    StopAction,
)
from okto.language.quantities import Quantity
from tests.language.util import error, errors, program, warnings


def rules(body: str) -> list[Rule]:
    return program(f"CONTROL {{\n{body}\n}}").config.control


def test_the_spec_example():
    found = rules(
        """
        on_epoch_end { SAVE model  LOG "epoch done" }
        EVERY 500 steps { SAVE checkpoint }
        IF loss > 3.0 { SET learning_rate = 0.00005  LOG "lowering lr" }
        IF epoch > 5 AND val_loss > 2.0 { STOP }
        on_nan { DECREASE learning_rate BY 50% }
        """
    )
    assert found == [
        Rule(
            kind="event",
            event="on_epoch_end",
            actions=[SaveAction(target="model"), LogAction(message="epoch done")],
        ),
        Rule(
            kind="every",
            event="on_step_end",
            interval=500,
            actions=[SaveAction(target="checkpoint")],
        ),
        Rule(
            kind="if",
            event="on_step_end",
            condition=Comparison(metric="loss", op=">", value=3.0),
            actions=[
                SetAction(field="learning_rate", value=5e-5),
                LogAction(message="lowering lr"),
            ],
        ),
        Rule(
            kind="if",
            event="on_step_end",
            condition=AllOf(
                conditions=[
                    Comparison(metric="epoch", op=">", value=5),
                    Comparison(metric="val_loss", op=">", value=2.0),
                ]
            ),
            actions=[StopAction()],
        ),
        Rule(
            kind="event",
            event="on_nan",
            actions=[
                AdjustAction(kind="decrease", field="learning_rate", amount=0.5, relative=True)
            ],
        ),
    ]


@pytest.mark.parametrize(
    "event", ["on_step_end", "on_epoch_end", "on_eval", "on_nan", "on_plateau"]
)
def test_event_blocks(event):
    (rule,) = rules(f"{event} {{ STOP }}")
    assert (rule.kind, rule.event, rule.actions) == ("event", event, [StopAction()])


def test_when_every_epochs_and_nesting():
    (outer, when, every) = rules(
        """
        on_epoch_end {
          IF loss > 2 { WHEN accuracy < 0.5 { STOP_TRAINING } }
          EVERY 2 epochs { SAVE "ep-{epoch}" }
        }
        WHEN gpu_memory < 12GB { SET batch_size = 16 }
        EVERY 3 epochs { LOG loss }
        """
    )
    nested_if, nested_every = outer.actions
    assert nested_if.event == "on_epoch_end"
    assert nested_if.actions[0].kind == "when"
    assert nested_if.actions[0].event == "on_epoch_end"
    assert nested_every == Rule(
        kind="every",
        event="on_epoch_end",
        interval=2,
        actions=[SaveAction(target="model", label="ep-{epoch}")],
    )
    assert when.condition == Comparison(metric="gpu_memory", op="<", value=Quantity(12, "GB"))
    assert (every.event, every.interval, every.actions) == (
        "on_epoch_end",
        3,
        [LogAction(metric="loss")],
    )


def test_and_binds_tighter_than_or_and_parentheses_group():
    (plain, grouped) = rules(
        """
        IF loss > 1 OR step > 2 AND lr < 3 { STOP }
        IF (loss > 1 OR step > 2) AND lr < 3 { STOP }
        """
    )
    assert isinstance(plain.condition, AnyOf)
    assert isinstance(plain.condition.conditions[1], AllOf)
    assert isinstance(grouped.condition, AllOf)
    assert isinstance(grouped.condition.conditions[0], AnyOf)


def test_set_aliases_and_adjustments():
    (rule,) = rules(
        """
        IF step > 1K {
          SET LR = 0.001  SET lr = 0.002  SET log_interval = 5
          INCREASE batch_size BY 2  DECREASE weight_decay BY 10%
        }
        """
    )
    assert rule.condition.value == Quantity(1, "K")
    assert rule.actions == [
        SetAction(field="learning_rate", value=0.001),
        SetAction(field="learning_rate", value=0.002),
        SetAction(field="logging_steps", value=5),
        AdjustAction(kind="increase", field="batch_size", amount=2, relative=False),
        AdjustAction(kind="decrease", field="weight_decay", amount=0.1, relative=True),
    ]


def test_adjust_apply():
    half = AdjustAction(kind="decrease", field="learning_rate", amount=0.5, relative=True)
    plus = AdjustAction(kind="increase", field="batch_size", amount=4, relative=False)
    assert half.apply(0.2) == pytest.approx(0.1)
    assert plus.apply(8) == 12


def test_condition_evaluation():
    (rule,) = rules("IF loss > 2 AND (gpu_memory < 12GB OR gpu_usage >= 90%) { STOP }")
    assert rule.holds({"loss": 3, "gpu_memory": 8e9, "gpu_usage": 10})
    assert rule.holds({"loss": 3, "gpu_memory": 20e9, "gpu_usage": 95})
    assert not rule.holds({"loss": 3, "gpu_memory": 20e9, "gpu_usage": 50})
    assert not rule.holds({"loss": 1, "gpu_memory": 1e9})
    # A missing metric (GPU metrics on a CPU) makes its comparison false.
    assert not rule.holds({"loss": 3})
    assert not Comparison(metric="loss", op="!=", value=1.0).evaluate({"loss": None})


@pytest.mark.parametrize(
    ("op", "value", "expected"),
    [
        (">", 1, True),
        ("<", 1, False),
        (">=", 2, True),
        ("<=", 2, True),
        ("==", 2, True),
        ("!=", 2, False),
    ],
)
def test_every_comparison_operator(op, value, expected):
    assert Comparison(metric="loss", op=op, value=value).evaluate({"loss": 2}) is expected


def test_is_due():
    every, top_if, epoch_rule = rules(
        """
        EVERY 100 steps { SAVE checkpoint }
        IF loss > 1 { STOP }
        on_epoch_end { STOP }
        """
    )
    assert every.is_due("on_step_end", 200) and not every.is_due("on_step_end", 150)
    assert top_if.is_due("on_step_end", 7) and not top_if.is_due("on_epoch_end", 7)
    assert epoch_rule.is_due("on_epoch_end", 1)


def test_rules_round_trip_through_json():
    p = program("CONTROL { WHEN gpu_memory < 12GB OR gpu_usage > 90% { SET batch_size = 4 } }")
    data = p.to_dict()["control"]
    assert data[0]["condition"]["conditions"][0]["value"] == "12GB"
    assert [Rule.model_validate(r) for r in data] == p.config.control


def test_source_map_of_rules():
    p = program('PROJECT "x"\nCONTROL {\n  on_nan { STOP }\n  IF loss > 1 { STOP }\n}')
    assert str(p.source_map["control[0]"]) == "t.okt:3:3"
    assert str(p.source_map["control[1]"]) == "t.okt:4:3"


# ---- check-time errors ---------------------------------------------------------


def test_unknown_metric_with_suggestion():
    assert error("CONTROL {\n  IF val_los > 2 { STOP }\n}") == (
        2,
        6,
        "unknown metric 'val_los' (did you mean 'val_loss'?)",
    )


def test_unknown_metric_in_log():
    assert error("CONTROL { on_nan { LOG los } }") == (
        1,
        24,
        "unknown metric 'los' (did you mean 'loss'?)",
    )


@pytest.mark.parametrize(
    ("message", "column"),
    [('"loss {loss:d}"', 30), ('"step {step:.2f}, lr {learning_rate:%Y}"', 30)],
)
def test_a_log_format_that_cannot_format_its_metric(message, column):
    """It parsed, and the run crashed mid-training with a ValueError when the rule fired."""
    line, col, text = error(f"CONTROL {{ IF step == 2 {{ LOG {message} }} }}")
    assert (line, col) == (1, column)
    assert text.startswith("LOG: {")
    assert "{loss:d} cannot format loss, a decimal number" in text or "{learning_rate:%Y}" in text


def test_log_formats_that_fit_and_braces_that_are_text_are_accepted():
    (rule,) = rules('IF step == 2 { LOG "{step:05d} {epoch:d} {lr:.2e} {note:d} {" }')
    assert rule.actions[0].message == "{step:05d} {epoch:d} {lr:.2e} {note:d} {"


def test_set_of_a_field_that_cannot_change_live():
    assert error("CONTROL { IF loss > 1 { SET optimizer = sgd } }") == (
        1,
        29,
        "SET cannot change optimizer while training runs",
    )


def test_set_of_an_unknown_field():
    assert error("CONTROL { IF loss > 1 { SET learnng_rate = 1 } }") == (
        1,
        29,
        "unknown TRAIN field 'learnng_rate' (did you mean 'learning_rate'?)",
    )


def test_set_value_is_type_checked():
    assert error('CONTROL { IF loss > 1 { SET batch_size = "many" } }') == (
        1,
        42,
        "SET batch_size: expected a whole number, got 'many'",
    )


@pytest.mark.parametrize(
    ("condition", "column", "message"),
    [
        ("gpu_memory < 12", 27, "gpu_memory is a size: write a unit, like 12GB"),
        ("gpu_usage > 2GB", 26, "gpu_usage is a percent, but 2GB is a size"),
        ("loss > 90%", 21, "loss is a plain number, but 90% is a percent"),
        ('loss > "high"', 21, 'compare loss with a number, not "high"'),
        ("loss > high", 21, "compare loss with a number"),
        ('gpu_memory < "lots"', 27, 'compare gpu_memory with a size, like 12GB, not "lots"'),
        ('gpu_memory < "12"', 27, "gpu_memory is a size: write a unit, like 12GB"),
        ('gpu_usage > "2GB"', 26, "gpu_usage is a percent, but 2GB is a size"),
        (
            'step > "3 epochs"',
            21,
            'compare step with a number or a count, like 120M, not "3 epochs"',
        ),
    ],
)
def test_thresholds_must_fit_the_metric(condition, column, message):
    assert error(f"CONTROL {{ IF {condition} {{ STOP }} }}") == (1, column, message)


@pytest.mark.parametrize(
    "condition",
    [
        'gpu_memory < "12GB"',
        'gpu_memory < "1.5GiB"',
        'gpu_usage > "90%"',
        'step > "1K"',
        'loss > "2.5"',
    ],
)
def test_quoted_thresholds_read_as_unquoted_ones(condition):
    quoted = rules(f"IF {condition} {{ STOP }}")
    unquoted = condition.replace('"', "")
    assert quoted == rules(f"IF {unquoted} {{ STOP }}")
    assert not isinstance(quoted[0].condition.value, str)


@pytest.mark.parametrize(
    ("body", "column", "message"),
    [
        ("on_memory_low { STOP }", 11, "unknown event 'on_memory_low'"),
        (
            "LOG loss",
            11,
            "expected a rule here: IF, WHEN, EVERY or an event block such as on_epoch_end { ... }",
        ),
        ("EVERY 2 hours { STOP }", 19, "EVERY counts steps or epochs, not 'hours'"),
        ("EVERY 0 steps { STOP }", 17, "EVERY needs a whole number above 0"),
        ("EVERY 1.5 steps { STOP }", 17, "EVERY needs a whole number above 0"),
        (
            "on_epoch_end { EVERY 5 steps { STOP } }",
            34,
            "EVERY 5 steps cannot be inside a rule checked on_epoch_end",
        ),
        ("IF loss > 1 { on_nan { STOP } }", 25, "on_nan goes at the top level of CONTROL"),
        ("IF loss > 1 { SAVE everything }", 30, 'SAVE takes model, checkpoint or a "label"'),
        ("IF loss > 1 { LOG 3 }", 29, 'LOG takes a string or a metric name: LOG "text", LOG loss'),
        (
            "IF loss > 1 { DECREASE lr BY 2s }",
            40,
            "DECREASE BY takes a number or a percentage, not a duration",
        ),
        ("IF loss > 1 { INCREASE lr BY -1 }", 40, "INCREASE BY needs an amount above 0"),
        (
            "IF loss > 1 { epochs: 3 }",
            25,
            "expected an action (SET, INCREASE, DECREASE, LOG, "
            "SAVE, STOP) or a rule (IF, WHEN, EVERY)",
        ),
    ],
)
def test_statement_errors(body, column, message):
    line, col, text = error(f"CONTROL {{ {body} }}")
    assert (line, col) == (1, column)
    assert text.startswith(message)


def test_a_lower_case_action_is_told_keywords_are_upper_case():
    with pytest.raises(InvalidProgram) as caught:
        program("CONTROL { on_nan { stop } }")
    assert caught.value.errors[0].hint == "keywords are upper case: STOP"


def test_other_tools_low_memory_event_points_to_its_rule():
    """on_memory_low (public OktoScript) got the list of events, none of which fits;
    the hint names the rule that does the same here."""
    with pytest.raises(InvalidProgram) as caught:
        program("CONTROL { on_memory_low { SET batch_size = 4 } }")
    assert caught.value.errors[0].hint.startswith("write WHEN gpu_memory < 2GB { ... }")
    (rule,) = program("CONTROL { WHEN gpu_memory < 2GB { SET batch_size = 4 } }").config.control
    assert rule.condition.metric == "gpu_memory"


@pytest.mark.parametrize(
    ("statement", "message", "hint"),
    [
        (
            "INCREASE batch_size BY 1.5",
            "batch_size is a whole number: INCREASE BY 1.5 would leave a fraction",
            "write a whole number, or a percentage: INCREASE batch_size BY 50%",
        ),
        (
            "DECREASE gradient_accumulation_steps BY 0.5",
            "gradient_accumulation is a whole number: DECREASE BY 0.5 would leave a fraction",
            "write a whole number, or a percentage: DECREASE gradient_accumulation BY 50%",
        ),
    ],
)
def test_an_absolute_fraction_of_a_whole_number_field_is_an_error(statement, message, hint):
    from okto.language import InvalidProgram

    rule = f"  EVERY 10 steps {{ {statement} }}"
    with pytest.raises(InvalidProgram) as caught:
        program(f"CONTROL {{\n{rule}\n}}")
    (diagnostic,) = caught.value.errors
    amount = rule.index(" BY ") + len(" BY ") + 1
    assert (diagnostic.line, diagnostic.column, diagnostic.message) == (2, amount, message)
    assert diagnostic.hint == hint


def test_whole_number_fields_take_whole_amounts_and_percentages():
    (rule,) = rules(
        "EVERY 10 steps { INCREASE batch_size BY 2.0  DECREASE eval_steps BY 12.5%  "
        "INCREASE learning_rate BY 0.5 }"
    )
    assert rule.actions == [
        AdjustAction(kind="increase", field="batch_size", amount=2, relative=False),
        AdjustAction(kind="decrease", field="eval_steps", amount=0.125, relative=True),
        AdjustAction(kind="increase", field="learning_rate", amount=0.5, relative=False),
    ]


def test_a_field_in_control_points_to_train():
    from okto.language import InvalidProgram

    try:
        program("CONTROL {\n  validate_every: 200\n}")
    except InvalidProgram as invalid:
        (diagnostic,) = invalid.errors
    assert (diagnostic.line, diagnostic.column) == (2, 3)
    assert diagnostic.message == "CONTROL holds rules, not fields: 'validate_every' is not one"
    assert diagnostic.hint == "to evaluate every N steps, set eval_steps in TRAIN"


def test_errors_inside_rules_are_all_reported():
    found = errors("CONTROL {\n  IF los > 1 { SET optimizer = sgd }\n  on_nan { LOG lsos }\n}")
    assert [(line, column) for line, column, _ in found] == [(2, 6), (2, 20), (3, 16)]


# ---- warnings ------------------------------------------------------------------


@pytest.mark.parametrize(
    "verb", ["RETRY", "REGENERATE", 'REPLACE WITH "no"', 'RETURN "x"', "ALERT"]
)
def test_inference_time_actions_warn_and_are_dropped(verb):
    p = program(f"CONTROL {{ IF loss > 1 {{ {verb} STOP }} }}")
    assert p.config.control[0].actions == [StopAction()]
    (found,) = p.warnings
    assert found.message.endswith("has no effect in training: it is an inference-time action")
    assert (found.line, found.column) == (1, 25)


def test_gpu_metric_rules_note_that_they_never_fire_on_a_cpu():
    (note,) = warnings("CONTROL { WHEN gpu_usage > 90% { STOP } }", severity="note")
    assert note == (
        1,
        16,
        "gpu_usage is read from the GPU: on a CPU-only machine this rule never fires",
    )
    (warning,) = warnings(
        'ENV { accelerator: "cpu" }\nCONTROL { WHEN gpu_temperature > 80 { STOP } }'
    )
    assert warning[:2] == (2, 16)
    assert "this file trains on the CPU" in warning[2]


def test_absolute_decrease_beyond_the_value_warns():
    (found,) = warnings(
        "TRAIN { learning_rate: 0.0001 }\nCONTROL { on_nan { DECREASE LR BY 0.5 } }"
    )
    assert found[:2] == (2, 35)
    assert found[2] == (
        "DECREASE learning_rate BY 0.5 subtracts 0.5 from 0.0001, leaving 0 or less"
    )
    assert warnings("CONTROL { on_nan { DECREASE LR BY 50% } }") == []


@pytest.mark.parametrize(
    ("field", "value", "amount", "percent"),
    [("learning_rate", "0.1", "0.5", "50%"), ("batch_size", "8", "8", "50%")],
)
def test_decrease_beyond_the_value_suggests_a_percentage_below_100(field, value, amount, percent):
    """An amount below 1 reads as a fraction (BY 0.5: BY 50%); DECREASE batch_size BY 8
    suggested `BY 800%`, which would take it to 0 as well."""
    p = program(
        f"TRAIN {{ {field}: {value} }}\nCONTROL {{ IF step > 1 {{ DECREASE {field} BY {amount} }} }}"
    )
    (found,) = p.warnings
    assert found.hint == f"for a relative change write a percentage: DECREASE {field} BY {percent}"


@pytest.mark.parametrize("amount", ['"50%"', '"2"', '"1e-4"'])
def test_quoted_amounts_read_as_unquoted_ones(amount):
    """`INCREASE ... BY "50%"` was a syntax error."""
    field = "batch_size" if amount == '"2"' else "learning_rate"
    quoted = rules(f"on_step_end {{ INCREASE {field} BY {amount} }}")
    assert quoted == rules(f"on_step_end {{ INCREASE {field} BY {amount.strip(chr(34))} }}")


def test_a_quoted_amount_that_is_no_number_is_an_error():
    line, col, text = error('CONTROL { on_nan { DECREASE lr BY "half" } }')
    assert (line, col, text) == (
        1,
        35,
        'DECREASE BY takes a number or a percentage, like 50%, not "half"',
    )


def test_changing_save_steps_under_another_save_strategy_warns():
    """The run says so when the rule fires (save_steps saves nothing under epoch or no);
    okto check said nothing. Nested rules are found too."""
    text = (
        'TRAIN { save_strategy: "epoch" }\n'
        "CONTROL {\n"
        "  IF loss > 3 { SET save_steps = 100 }\n"
        "  on_epoch_end { IF loss < 1 { INCREASE save_steps BY 10 } }\n"
        "}"
    )
    assert warnings(text) == [
        (3, 17, "SET save_steps has no effect with save_strategy: epoch"),
        (4, 32, "INCREASE save_steps has no effect with save_strategy: epoch"),
    ]
    no = text.replace('"epoch"', '"no"')
    assert warnings(no)[0][2] == "SET save_steps has no effect with save_strategy: no"
    # save_strategy left unset: a save_steps a rule sets saves checkpoints
    assert warnings(text.replace('save_strategy: "epoch"', "")) == []


@pytest.mark.parametrize(
    ("condition", "message", "hint"),
    [
        (
            "accuracy > 90",
            "accuracy > 90 never holds: accuracy is from 0 to 1",
            "accuracy is a fraction: write accuracy > 0.9",
        ),
        ("loss < 0", "loss < 0 never holds: loss is 0 or more", None),
        ("perplexity < 1", "perplexity < 1 never holds: perplexity is 1 or more", None),
        ("gpu_usage > 150%", "gpu_usage > 150% never holds: gpu_usage is from 0% to 100%", None),
        ("step == -1", "step == -1 never holds: step is 0 or more", None),
        ("loss >= 0", "loss >= 0 always holds: loss is 0 or more", None),
        ('val_loss > "-1"', 'val_loss > "-1" always holds: val_loss is 0 or more', None),
    ],
)
def test_a_condition_no_value_can_change_warns(condition, message, hint):
    """`IF accuracy > 90` (accuracy is 0 to 1) passed check and never fired."""
    (found,) = [
        d
        for d in program(f"CONTROL {{ IF {condition} {{ STOP }} }}").warnings
        if d.severity == "warning"
    ]
    assert (found.column, found.message, found.hint) == (14, message, hint)


@pytest.mark.parametrize(
    "condition",
    [
        "accuracy >= 1",
        "accuracy > 0",
        "loss > 0",
        "loss <= 0",
        "step > 1K",
        "gpu_usage < 100%",
        "perplexity == 1",
    ],
)
def test_conditions_that_can_go_either_way_do_not_warn(condition):
    assert warnings(f"CONTROL {{ IF {condition} {{ STOP }} }}") == []


def test_accuracy_in_percent_is_told_it_is_a_fraction():
    p = "CONTROL { IF accuracy > 90% { STOP } }"
    with pytest.raises(InvalidProgram) as raised:
        program(p)
    (found,) = raised.value.errors
    assert found.hint == "accuracy is a fraction from 0 to 1: write 0.9"


def test_a_misspelt_metric_in_braces_warns():
    """LOG "{los}" and SAVE "model-{epcoh}" printed and saved the braces as written."""
    text = 'CONTROL { on_epoch_end { LOG "{los} {LR} {json} {}"  SAVE "model-{epcoh}" } }'
    assert [message for _, _, message in warnings(text)] == [
        "LOG: {los} is not a metric, so it stays as written (did you mean {loss}?)",
        "SAVE: {epcoh} is not a metric, so it stays as written (did you mean {epoch}?)",
    ]
    fine = 'CONTROL { on_epoch_end { LOG "{loss:.3f} {learning_rate:.1e} {LR}"  SAVE "{epoch}" } }'
    assert warnings(fine) == []


def test_adjusting_a_field_train_leaves_unset_warns():
    """DECREASE eval_steps BY 50% and INCREASE save_steps BY 10% of an unset field have
    nothing to move: the run says so and leaves it unset (it used to set it to 1)."""
    text = (
        "CONTROL { on_epoch_end {\n"
        "  DECREASE eval_steps BY 50%\n"
        "  INCREASE save_steps BY 10%\n"
        "  INCREASE eval_steps BY 100\n"  # from 0 to 100: what it says
        "} }"
    )
    assert warnings(text) == [
        (
            2,
            3,
            "DECREASE eval_steps has no effect: TRAIN does not set eval_steps, so there is "
            "nothing to move (SET it first, or give it in TRAIN)",
        ),
        (
            3,
            3,
            "INCREASE save_steps has no effect: TRAIN does not set save_steps, so there is "
            "nothing to move (SET it first, or give it in TRAIN)",
        ),
    ]
    assert warnings("TRAIN { eval_steps: 10 }\n" + text)[0][0] == 4  # save_steps' only
    # a rule that SETs it first
    assert warnings(text.replace("{\n", "{\n  SET eval_steps = 8  SET save_steps = 9\n", 1)) == []
    (clip,) = warnings(
        "TRAIN { gradient_clip: false }\nCONTROL { on_nan { DECREASE gradient_clip BY 50% } }"
    )
    assert clip[2] == "DECREASE gradient_clip has no effect: gradient_clip is false"


@pytest.mark.parametrize(
    ("rule", "column", "message", "hint"),
    [
        (
            "IF NOT loss > 2 { STOP }",
            18,
            "unexpected 'loss': expected a comparison (>, <, >=, <=, ==, !=)",
            "conditions have no NOT: write the opposite comparison (> and <=, < and >=, == and !=)",
        ),
        (
            "IF !(loss > 2) { STOP }",
            14,
            "unexpected character '!'",
            "conditions have no NOT: write the opposite comparison (> and <=, < and >=, == and !=)",
        ),
        (
            "IF loss > 2 and step > 3 { STOP }",
            23,
            "unexpected 'and': expected '{', AND or OR",
            "keywords are upper case: AND",
        ),
        (
            "IF loss > 2 && step > 3 { STOP }",
            23,
            "unexpected character '&'",
            "conditions join with AND",
        ),
        (
            "IF loss > 2 || step > 3 { STOP }",
            23,
            "unexpected character '|'",
            "conditions join with OR",
        ),
        (
            "IF loss > 2 STOP",
            23,
            "unexpected keyword STOP: expected '{', AND or OR",
            "a rule's actions go in braces after its condition: IF loss > 3 { STOP }",
        ),
        (
            "IF 2 < loss { STOP }",
            14,
            "unexpected number 2: expected '(' or a name",
            "a condition begins with a metric's name: loss > 2.0",
        ),
        (
            "EVERY 100 { STOP }",
            21,
            "unexpected '{': expected a name",
            "EVERY counts steps or epochs: EVERY 100 steps { ... }",
        ),
        (
            "on_nan { INCREASE lr TO 2 }",
            32,
            "unexpected 'TO': expected BY",
            "INCREASE and DECREASE take BY an amount; for a new value write SET lr = ...",
        ),
        (
            "on_nan { DECREASE lr by 50% }",
            32,
            "unexpected 'by': expected BY",
            "keywords are upper case: BY",
        ),
        ("on_nan { SET lr: 1 }", 26, "unexpected ':': expected '='", "SET takes '=': SET lr = ..."),
        (
            "IF loss > 2 { STOP now }",
            30,
            "STOP takes no argument: found 'now'",
            'to log a reason, write LOG "now" before STOP',
        ),
        (
            "IF loss > 2 { STOP 3 }",
            30,
            "STOP takes no argument: found number 3",
            'to log a reason, write LOG "3" before STOP',
        ),
        (
            "IF loss > 2 { STOP_TRAINING now }",
            39,
            "STOP_TRAINING takes no argument: found 'now'",
            'to log a reason, write LOG "now" before STOP_TRAINING',
        ),
        ("if loss > 2 { STOP }", 11, "'if' is not a keyword: keywords are upper case", "write IF"),
        (
            "every 2 steps { STOP }",
            11,
            "'every' is not a keyword: keywords are upper case",
            "write EVERY",
        ),
        (
            "IF loss > 2 { LOG }",
            29,
            "unexpected '}': expected a value",
            'for example: LOG "a message", or LOG loss for a metric\'s value',
        ),
        (
            "IF loss > 2 { SET = 3 }",
            29,
            "unexpected '=': expected a name",
            "for example: SET learning_rate = 1e-4",
        ),
        (
            "EVERY steps { STOP }",
            17,
            "unexpected 'steps': expected a number or a quantity (like 12GB)",
            "for example: EVERY 100 steps { ... }",
        ),
        (
            "on_nan { set lr = 1 }",
            20,
            "'set' is not a keyword: keywords are upper case",
            "write SET",
        ),
    ],
)
def test_slips_in_rules_get_a_hint(rule, column, message, hint):
    """`and`, `&&`, NOT, `if`, `TO`, `EVERY 100 {` were told only which token was expected
    (`every 2 steps` even read 'missing ':' ... write every: 2'); `LOG }`, `SET = 3` and
    `EVERY steps` were told the keyword 'cannot name a field or a block'."""
    with pytest.raises(InvalidProgram) as raised:
        program(f"CONTROL {{ {rule} }}")
    (found,) = raised.value.errors
    assert (found.line, found.column, found.message, found.hint) == (1, column, message, hint)


def test_a_lower_case_word_outside_control_is_not_taken_for_a_keyword():
    assert error("TRAIN { every 2 }")[2] == "missing ':' between 'every' and its value"


def test_a_condition_past_the_end_of_the_run_warns():
    """`IF epoch > 5` with epochs: 3 passed check and never fired."""
    text = (
        "TRAIN { epochs: 3 }\n"
        "CONTROL {\n"
        "  IF epoch > 5 AND loss > 2 { STOP }\n"
        "  on_epoch_end { WHEN epoch == 3 { STOP } }\n"
        "}"
    )
    assert warnings(text) == [
        (3, 3, "epoch > 5 never holds: the run ends at epoch 3 (TRAIN.epochs)")
    ]
    assert apply_overrides(program(text), "TRAIN.epochs=6").warnings == []
    (steps,) = warnings("TRAIN { max_steps: 1K }\nCONTROL { IF step >= 2K { STOP } }")
    assert steps[2] == "step >= 2K never holds: the run ends at step 1000 (TRAIN.max_steps)"


@pytest.mark.parametrize(
    "control",
    ['IF loss > 2 { STOP } ELSE { LOG "x" }', 'on_nan { IF loss > 2 { STOP } ELSE { LOG "x" } }'],
)
def test_else_says_there_is_none(control):
    """ELSE was 'unknown event' with the list of events (inside a rule, no hint at all)."""
    with pytest.raises(InvalidProgram) as raised:
        program(f"CONTROL {{ {control} }}")
    (found,) = raised.value.errors
    assert found.hint == "there is no ELSE: write a second rule with the opposite condition"


def test_stop_with_a_reason_says_stop_takes_none_and_how_to_log_one(tmp_path, capsys):
    """`STOP "reason"` got the generic 'expected an action or a rule'."""
    path = tmp_path / "t.okt"
    path.write_text('CONTROL {\n  IF loss > 9 { STOP "loss exploded" }\n}\n', encoding="utf-8")
    assert main(["check", "-f", str(path)]) == 2
    err = capsys.readouterr().err
    assert f'{path}:2:22: error: STOP takes no argument: found string "loss exploded"' in err
    assert 'to log a reason, write LOG "loss exploded" before STOP' in err
    assert err.endswith(f"{path}: 1 error\n")
    path.write_text('CONTROL {\n  on_nan { STOP_TRAINING "nan" }\n}\n', encoding="utf-8")
    assert main(["check", "-f", str(path)]) == 2
    err = capsys.readouterr().err
    assert f'{path}:2:26: error: STOP_TRAINING takes no argument: found string "nan"' in err
    assert 'to log a reason, write LOG "nan" before STOP_TRAINING' in err
    rule = rules('IF loss > 9 { LOG "loss exploded" STOP }')[0]
    assert rule.actions == [LogAction(message="loss exploded"), StopAction()]
