"""CONTROL rules at their events and STABILITY stops, through `okto train`."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

import okto
from okto.training.metrics import read_metrics
from okto.training.stability import LossGuard, Plateau, planned_evaluations
from tests.training.conftest import steps, train

METRICS = Path("runs/tiny/metrics.jsonl")


def test_set_adjust_log_save_and_stop(project, capsys):
    path = project(
        train='max_steps: 20 scheduler: "constant" eval_steps: 4',
        extra="""CONTROL {
  IF step == 3 { SET learning_rate = 0.0005 }
  IF step == 5 { DECREASE LR BY 50% }
  WHEN step >= 2 { LOG "[once] loss {loss:.2f} at step {step}" }
  EVERY 4 steps { SAVE "at-{step}" }
  on_eval { IF step == 8 { INCREASE batch_size BY 2 } }
  IF step == 10 { STOP }
}""",
    )
    assert train(path) == 0
    records = steps()
    lr = {r["step"]: r["lr"] for r in records}
    assert lr[2] == 3e-3 and lr[3] == 5e-4 and math.isclose(lr[5], 2.5e-4)
    assert records[-1]["step"] == 10
    logs = read_metrics(METRICS, "log")
    assert len(logs) == 1 and logs[0]["message"].endswith("at step 2")
    out = capsys.readouterr().out
    assert "LOG      step 2: [once] loss " in out  # brackets are not markup
    assert "save     step 10: checkpoint -> " in out  # every save prints a line
    assert sorted(p.name for p in Path("runs/tiny/saved").iterdir()) == ["at-4", "at-8"]
    assert (Path("runs/tiny/saved/at-8/model.safetensors")).is_file()
    changes = {(r["step"], r["field"]): r["after"] for r in read_metrics(METRICS, "set")}
    assert changes[(8, "batch_size")] == 6
    start = read_metrics(METRICS, "start")[0]
    # The examples consumed show the new batch size took effect after step 8.
    assert math.isclose(records[-1]["epoch"] * start["rows"], 8 * 4 + 2 * 6)
    assert read_metrics(METRICS, "summary")[0]["outcome"] == "stopped"


def test_epoch_end_rules_see_that_epochs_evaluation(project):
    """With no eval_steps the run evaluates at each epoch's end, before on_epoch_end."""
    path = project(
        train='epochs: 2 scheduler: "constant"',
        extra='CONTROL { on_epoch_end { LOG "epoch {epoch} val {val_loss:.6f}" } }',
    )
    assert train(path) == 0
    evals = read_metrics(METRICS, "eval")
    logs = [r["message"] for r in read_metrics(METRICS, "log")]
    # the run's final evaluation adds nothing new after the last epoch's
    assert logs == [f"epoch {i} val {e['val_loss']:.6f}" for i, e in enumerate(evals[:2], 1)]


def test_a_step_that_ends_several_epochs_evaluates_once(project, tmp_path):
    """Two short records packed into one row, batches of 4: the one step ends all four
    epochs. They used to be evaluated four times with the same weights, and on_epoch_end
    saw the last epoch's number each time."""
    import json

    (tmp_path / "val.jsonl").write_text(json.dumps({"text": "the cat sat on a mat"}) + "\n")
    path = project(
        train='epochs: 4 scheduler: "constant"',
        records=[{"text": "the cat sat"}, {"text": "a dog ran to the park"}],
        dataset='validation: "val.jsonl"',
        extra='CONTROL { on_epoch_end { LOG "epoch {epoch}" } }',
    )
    assert train(path) == 0
    assert [e["step"] for e in read_metrics(METRICS, "eval")] == [1]
    logs = [r["message"] for r in read_metrics(METRICS, "log")]
    assert logs == ["epoch 1", "epoch 2", "epoch 3", "epoch 4"]


@pytest.mark.parametrize("rule", ["IF step == 3 { STOP }", "on_eval { STOP }"])
def test_a_stop_at_the_last_step_completes_the_run(project, rule):
    """A STOP that ended nothing (the run's last step, or its final evaluation) was reported
    as 'stopped at step 3', though every step ran."""
    path = project(train="max_steps: 3", extra=f"CONTROL {{ {rule} }}")
    result = okto.train(path)
    assert result.outcome == "completed" and result.steps == 3
    assert read_metrics(METRICS, "summary")[0]["outcome"] == "completed"


def test_nan_stops_with_a_checkpoint_and_exit_3(project, capsys):
    path = project(
        train='max_steps: 20 scheduler: "constant"',
        extra="""CONTROL {
  IF step == 2 { SET learning_rate = 1e30 }
  on_nan { LOG "nan seen: loss {loss}" }
}""",
    )
    assert train(path) == 3
    err = capsys.readouterr().err
    assert "NaN or infinite" in err and "checkpoint" in err
    nan = read_metrics(METRICS, "nan")
    assert len(nan) == 1
    # the bad step's own loss, not the last finite one's
    assert [r["message"] for r in read_metrics(METRICS, "log")] == ["nan seen: loss nan"]
    assert Path(f"runs/tiny/checkpoints/step-{nan[0]['step']:07d}").is_dir()
    assert not Path("runs/tiny/final").exists()


def test_the_summary_shows_a_non_finite_last_loss_as_it_was(project, capsys):
    """With stop_if_nan: false the summary's last loss was the last finite one, steps before
    the run's end, as if the run had ended well."""
    path = project(
        train='max_steps: 6 scheduler: "constant"',
        extra="""STABILITY { stop_if_nan: false }
CONTROL { IF step == 2 { SET learning_rate = 1e30 } }""",
    )
    result = okto.train(path)  # step 3's update takes the 1e30 rate: steps 4 to 6 are NaN
    assert result.outcome == "completed" and math.isnan(result.last_loss)
    losses = [record["loss"] for record in steps()]
    assert losses[3:] == [None, None, None]  # the non-finite steps are logged, as null
    finite = losses[2]
    said = " ".join(capsys.readouterr().out.split())
    assert f"-> last nan (3 non-finite steps; last finite {finite:.4f}, best" in said
    summary = read_metrics(METRICS, "summary")[0]
    assert summary["last_loss"] is None and summary["last_finite_loss"] == finite


def test_a_diverged_run_reports_the_loss_it_stopped_at(project, capsys):
    """The diverging step's loss was left out of the summary: it read the step before's."""
    path = project(
        train='max_steps: 30 scheduler: "constant"',
        extra="""STABILITY { stop_if_diverges: true }
CONTROL { IF step == 12 { SET learning_rate = 3 } }""",
    )
    assert train(path) == 3
    summary = read_metrics(METRICS, "summary")[0]
    assert summary["outcome"] == "diverged"
    assert summary["last_loss"] > 1.5 * summary["best_loss"]
    said = " ".join(capsys.readouterr().out.split())
    assert "stop_if_diverges acts after 10 steps: from step 11 on" in said
    assert f"this step's loss is {summary['last_loss']:.4g}" in said
    assert f"-> last {summary['last_loss']:.4f} (best" in said


def test_divergence_watching_that_cannot_act_is_warned(project, capsys):
    """stop_if_diverges waits 10 steps, which nothing said: a 5-step run was never watched."""
    path = project(train="max_steps: 5", extra="STABILITY { stop_if_diverges: true }")
    assert train(path) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "warning: STABILITY.stop_if_diverges acts after 10 steps, and this run has 5" in said


def test_early_stopping_fires_on_plateau(project):
    path = project(
        train='max_steps: 40 scheduler: "constant" eval_steps: 2 early_stopping: 2',
        extra='CONTROL { on_plateau { LOG "plateau" } }',
    )
    assert train(path, "--set", "TRAIN.learning_rate=1e-9") == 0
    assert [r["message"] for r in read_metrics(METRICS, "log")] == ["plateau"]
    assert steps()[-1]["step"] < 40
    assert read_metrics(METRICS, "summary")[0]["outcome"] == "early_stopping"


# evaluations at steps 3, 6 and a final one at 8; at 4 and 8, the last as eval_steps has it
@pytest.mark.parametrize(("eval_steps", "patience"), [(3, 2), (4, 1)])
def test_a_plateau_at_the_last_step_is_no_early_stop(project, capsys, eval_steps, patience):
    """A run whose every step ran, its plateau seen at the last evaluation, said 'early
    stopping: no improvement' and ended as early_stopping: it completed, with its on_plateau
    rules fired."""
    path = project(
        train=f'max_steps: 8 scheduler: "constant" eval_steps: {eval_steps} '
        f"early_stopping: {patience}",
        extra='CONTROL { on_plateau { LOG "plateau {step}" } } STABILITY { min_improvement: 0.1 }',
    )
    assert train(path, "--set", "TRAIN.learning_rate=1e-9") == 0
    assert [r["message"] for r in read_metrics(METRICS, "log")] == ["plateau 8"]
    assert read_metrics(METRICS, "summary")[0]["outcome"] == "completed"
    assert "early stopping" not in capsys.readouterr().out


def test_early_stopping_that_cannot_act_is_warned(project, capsys):
    """4 steps into an epoch of 48: one evaluation, at the end, where early stopping needs 3
    (the first sets the best). It was silent."""
    path = project(
        train="max_steps: 4 early_stopping: 2", extra='CONTROL { on_plateau { LOG "flat" } }'
    )
    assert train(path) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert (
        "TRAIN.early_stopping and CONTROL on_plateau rules need 3 evaluations, and this run "
        "of 4 steps makes 1 (at epoch ends and at the end): they never act; set "
        "TRAIN.eval_steps" in said
    )


@pytest.mark.parametrize(
    ("total", "per_step", "rows", "eval_steps", "made"),
    [
        (4, 4, 189, None, 1),  # the end only
        (100, 4, 189, None, 3),  # epochs end at steps 48 and 95, then the end
        (48, 4, 192, None, 1),  # the last step ends the epoch: no second evaluation
        (5, 8, 3, None, 5),  # rows smaller than a step: every step ends an epoch
        (10, 4, 189, 4, 3),  # steps 4, 8 and the end
        (12, 4, 189, 4, 3),
    ],
)
def test_planned_evaluations(total, per_step, rows, eval_steps, made):
    assert planned_evaluations(total, per_step, rows, eval_steps) == made


def test_divergence_guard_and_plateau_counting():
    guard = LossGuard()
    assert not any(guard.diverged(2.0) for _ in range(20))
    assert any(guard.diverged(50.0) for _ in range(5))
    # a blow-up inside the first WARMUP steps is caught once they are over
    early = LossGuard()
    flags = [early.diverged(loss) for loss in (5.7, 3.7e4, 1.2e5, *[2e4] * 10)]
    assert not any(flags[:10]) and flags[10]
    # the usual start, falling from its first loss, never trips it
    falling = LossGuard()
    assert not any(falling.diverged(10.8 * 0.97**i + 0.3 * (i % 2)) for i in range(60))
    plateau = Plateau(patience=2, min_improvement=0.1)
    assert [plateau.update(v) for v in (3.0, 2.95, 2.97, 2.0, 1.99, 1.98)] == [
        False,
        False,
        True,
        False,
        False,
        True,
    ]


def test_a_skipped_non_finite_step_still_has_its_events(project):
    """With stop_if_nan: false, a NaN step skipped its EVERY rules, its log line, the
    evaluation and the checkpoint due at it; the next log line's step time was that of
    every step since over the finite ones."""
    path = project(
        train='max_steps: 6 scheduler: "constant" eval_steps: 2 save_steps: 2',
        extra="""STABILITY { stop_if_nan: false }
CONTROL {
  IF step == 2 { SET learning_rate = 1e30 }
  EVERY 2 steps { LOG "at {step}" }
  on_nan { SAVE checkpoint }
}""",
    )
    assert train(path) == 0  # step 3's update takes the 1e30 rate: steps 4 to 6 are NaN
    assert [r["step"] for r in read_metrics(METRICS, "nan")] == [4, 5, 6]
    assert [r["message"] for r in read_metrics(METRICS, "log")] == ["at 2", "at 4", "at 6"]
    assert [r["step"] for r in read_metrics(METRICS, "eval")] == [2, 4, 6]
    saved = [r["step"] for r in read_metrics(METRICS, "save")]
    assert saved == [2, 4, 5, 6]  # save_steps, and on_nan's SAVE checkpoint at step 5
    assert [r["step"] for r in steps()] == [1, 2, 3, 4, 5, 6]


def test_rules_read_throughput_after_a_log_line_and_no_stand_in_perplexity(project):
    """At on_eval, right after the step's log line, tokens_per_second was not measured, so
    rules on it never fired; before the first evaluation `perplexity` read exp(training
    loss) although validation data was there."""
    path = project(
        train='max_steps: 4 scheduler: "constant" eval_steps: 2',
        extra="""CONTROL {
  IF step == 1 { LOG "perplexity {perplexity}" }
  on_eval { IF tokens_per_second > 0 { LOG "rate {tokens_per_second:.0f}" } }
}""",
    )
    assert train(path) == 0
    messages = [r["message"] for r in read_metrics(METRICS, "log")]
    rates = [f"rate {r['tokens_per_second']:.0f}" for r in steps() if r["step"] in (2, 4)]
    assert messages == ["perplexity {perplexity}", *rates]


@pytest.mark.parametrize(("strategy", "saved"), [("", [3, 6, 9]), ('save_strategy: "epoch"', [9])])
def test_save_steps_a_rule_sets_checkpoints_as_in_the_file(project, capsys, strategy, saved):
    """SET save_steps in a file without save_steps (save_strategy epoch by default) printed
    the change and saved nothing: save_steps checkpoints now, as it does in the file, unless
    the file chose another save_strategy, which is warned."""
    path = project(
        train=f"max_steps: 9 {strategy}", extra="CONTROL { IF step == 2 { SET save_steps = 3 } }"
    )
    assert train(path) == 0
    checkpoints = [r["step"] for r in read_metrics(METRICS, "save") if r["what"] == "checkpoint"]
    assert checkpoints == saved
    warned = "save_steps has no effect with save_strategy: epoch" in capsys.readouterr().out
    assert warned == bool(strategy)
