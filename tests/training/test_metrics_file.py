"""The metrics file of a run stopped and resumed: each step once, with the resumed run's
values. The steps a crashed run logged after its last checkpoint were in the file twice,
once from each run, after `--resume auto`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from okto.training.loop import Trainer
from okto.training.metrics import kept_until, read_metrics
from tests.training.conftest import steps, train

METRICS = Path("runs/tiny/metrics.jsonl")
SCHEDULE = 'max_steps: 12 scheduler: "cosine" warmup_steps: 2 save_steps: 4'
FIELDS = ("step", "loss", "lr", "grad_norm")


def _curve(run: Path) -> list[tuple]:
    return [tuple(record[f] for f in FIELDS) for record in steps(run)]


def test_a_crashed_run_resumed_has_each_step_once_from_the_resumed_run(project, monkeypatch):
    """A crash at step 7 (an error, no summary) after the checkpoint of step 4: steps 5 and 6
    were logged by the crashed run and again by the resumed one."""
    whole = project(train=SCHEDULE)
    assert train(whole, "--set", "OUTPUT.dir=whole") == 0

    def crash(self, text):
        raise RuntimeError("crashed")

    crashing = project(train=SCHEDULE, extra='CONTROL { IF step == 7 { LOG "x" } }', name="c.okt")
    with monkeypatch.context() as patches, pytest.raises(RuntimeError, match="crashed"):
        patches.setattr(Trainer, "log", crash)
        train(crashing)
    assert [r["step"] for r in steps()] == list(range(1, 7))  # the rules come before the log
    assert train(whole, "--resume", "auto") == 0
    records = read_metrics(METRICS)
    assert [r["step"] for r in records if r["event"] == "step"] == list(range(1, 13))
    resumed = [i for i, r in enumerate(records) if r["event"] == "start"][1]
    assert records[resumed]["resumed_from"].endswith("step-0000004")
    assert [r["step"] for r in records[resumed:] if r["event"] == "step"] == list(range(5, 13))
    saves = [r["step"] for r in records if r["event"] == "save"]
    assert saves == [4, 8, 12]  # the crashed run's saves up to its checkpoint only
    assert _curve(Path("runs/tiny")) == _curve(Path("whole/tiny"))
    assert not list(METRICS.parent.glob(".tmp-*"))


def test_the_window_logged_after_the_last_checkpoint_is_not_counted_twice(project):
    """A STOP at step 6 with logging_steps 4: the run's last checkpoint keeps the window
    (steps 5 and 6), which the stopped run then logged as step 6, and the resumed run
    again in its step 8: two lines counted steps 5 and 6."""
    every4 = ("--set", "TRAIN.logging_steps=4")
    whole = project(train=SCHEDULE)
    assert train(whole, *every4, "--set", "OUTPUT.dir=whole") == 0
    stopped = project(train=SCHEDULE, extra="CONTROL { IF step == 6 { STOP } }", name="s.okt")
    assert train(stopped, *every4) == 0
    assert [r["step"] for r in steps()] == [4, 6]
    assert train(whole, *every4, "--resume", "auto") == 0
    assert _curve(Path("runs/tiny")) == _curve(Path("whole/tiny"))  # steps 4, 8, 12
    summaries = read_metrics(METRICS, "summary")  # how the first session ended is kept
    assert [(r["outcome"], r["steps"]) for r in summaries] == [("stopped", 6), ("completed", 12)]


def _lines(*records: dict) -> list[str]:
    return [json.dumps(r) for r in records]


def test_what_a_resume_keeps_of_the_file():
    """Everything up to the checkpoint's save, whatever its event; after it only the
    sessions' starts and the summary of a session that ended at the checkpoint; a line
    cut short and every record past the checkpoint's step dropped."""
    before = _lines(
        {"event": "start", "resumed_from": None},
        {"event": "step", "step": 2, "loss": 1.0},
        {"event": "log", "step": 2, "message": "hi"},
        {"event": "eval", "step": 2, "val_loss": 1.0},
        {"event": "save", "step": 2, "what": "checkpoint", "path": "c/step-0000002"},
    )
    after = _lines(
        {"event": "step", "step": 2, "loss": 0.9},  # the window logged after the checkpoint
        {"event": "summary", "outcome": "interrupted", "steps": 2},
        {"event": "start", "resumed_from": "c/step-0000002"},
        {"event": "step", "step": 3, "loss": 0.8},
        {"event": "set", "step": 3, "field": "lr", "before": 1, "after": 2, "by": "CONTROL"},
        {"event": "summary", "outcome": "nan", "steps": 3},
    )
    lines = before + after + ['{"event": "st']
    assert kept_until(lines, 2) == [*before, after[1], after[2]]
    # a checkpoint whose save is not in the file (another metrics file wrote it): by step
    assert kept_until(lines, 1) == [*before[:1], after[2]]
    assert kept_until(before, 5) == before
