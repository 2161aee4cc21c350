"""Ctrl-C and SIGTERM past the last step: the final evaluation and the final saves. The run
stops as interrupted with the signal's exit code, keeps a checkpoint of the last step, and
--resume auto finishes it."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from okto.training import loop
from okto.training import run as run_module
from okto.training.loop import Trainer
from okto.training.metrics import read_metrics
from tests.training.conftest import sentences, train

METRICS = Path("runs/tiny/metrics.jsonl")


def _outcomes() -> list[str]:
    return [r["outcome"] for r in read_metrics(METRICS, "summary")]


def test_ctrl_c_during_the_final_evaluation_stops_with_130(project, monkeypatch, capsys):
    """It printed 'stopping after this step', then saved the final model and exited 0."""
    evaluate = Trainer._evaluate

    def interrupted_evaluation(self):
        if self.step == self.total:  # the evaluation after the last step
            os.kill(os.getpid(), signal.SIGINT)
        evaluate(self)

    path = project()
    with monkeypatch.context() as patches:
        patches.setattr(Trainer, "_evaluate", interrupted_evaluation)
        assert train(path) == 130
    said = capsys.readouterr()
    assert "SIGINT: stopping before the final model is saved" in " ".join(said.out.split())
    assert "interrupted after the last step (12)" in said.err
    assert "--resume auto finishes the run" in said.err
    assert (Path("runs/tiny/checkpoints") / "step-0000012").is_dir()
    assert not Path("runs/tiny/final").exists()
    assert _outcomes() == ["interrupted"]
    assert train(path, "--resume", "auto") == 0
    assert Path("runs/tiny/final/model.safetensors").is_file()
    assert [r["step"] for r in read_metrics(METRICS, "eval")] == [12]  # not evaluated twice
    assert _outcomes() == ["interrupted", "completed"]


def test_sigterm_while_saving_the_final_model_is_143_with_a_summary(project, monkeypatch, capsys):
    """It ended with a bare 'terminated (SIGTERM)': no summary, no word of the checkpoint.
    The resumed run scored the test split again, a second `test` line for the same step."""

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)

    held = "".join(json.dumps({"text": s}) + "\n" for s in sentences(8, seed=7))
    Path("held.jsonl").write_text(held)
    path = project(extra="EXPORT { }", dataset='test: "held.jsonl"')
    with monkeypatch.context() as patches:
        patches.setattr(run_module, "_save_final", terminated)
        assert train(path) == 143
    err = " ".join(capsys.readouterr().err.split())
    assert "interrupted while saving the final model and exports" in err
    assert "step-0000012 holds every step: --resume auto writes them" in err
    assert _outcomes() == ["interrupted"]
    assert train(path, "--resume", "auto") == 0
    assert Path("runs/tiny/final/model.safetensors").is_file()
    assert list(Path("runs/tiny/export").iterdir())
    assert _outcomes() == ["interrupted", "completed"]
    assert [r["step"] for r in read_metrics(METRICS, "test")] == [12]
    summary = read_metrics(METRICS, "summary")[-1]
    assert summary["test_loss"] == read_metrics(METRICS, "test")[0]["test_loss"]


EVALUATIONS = {
    "eval_steps": (
        "max_steps: 8 eval_steps: 4 save_steps: 4",
        "on_eval { IF step == 4 { SET learning_rate = 0.001 } }",
        160,
    ),
    # the evaluation at an epoch's end comes before its on_epoch_end rules
    "epochs": (
        'epochs: 2 save_strategy: "epoch"',
        "on_epoch_end { SET learning_rate = 0.001 }",
        24,
    ),
}


@pytest.mark.parametrize("when", EVALUATIONS)
def test_ctrl_c_during_an_evaluation_abandons_it_and_resume_evaluates_again(
    project, monkeypatch, capsys, when
):
    """The evaluation ran to its end before the run stopped, however long it was. Now it is
    given up at its next batch; the checkpoint is of the step before it, and the resumed
    run evaluates again (and runs the rules after it), so its losses and evaluations are an
    uninterrupted run's."""
    schedule, rule, rows = EVALUATIONS[when]
    held = "".join(json.dumps({"text": s}) + "\n" for s in sentences(12, seed=7))
    Path("held.jsonl").write_text(held)  # 3 batches of 4 rows
    path = project(
        train=f'{schedule} scheduler: "cosine" warmup_steps: 2',
        extra=f"CONTROL {{ {rule} }}",
        records=[{"text": s} for s in sentences(rows)],
        dataset='validation: "held.jsonl"',
    )
    assert train(path, "--set", "OUTPUT.dir=whole") == 0
    whole = Path("whole/tiny/metrics.jsonl")
    batch_sums, batches = loop.batch_sums, []

    def interrupted(*args):  # the first batch of the first evaluation, at step 4
        if not batches:
            os.kill(os.getpid(), signal.SIGINT)
        batches.append(args)
        return batch_sums(*args)

    with monkeypatch.context() as patches:
        patches.setattr(loop, "batch_sums", interrupted)
        assert train(path, "--set", "OUTPUT.dir=parts") == 130
    parts = Path("parts/tiny/metrics.jsonl")
    assert len(batches) == 1  # of 3
    said = capsys.readouterr()
    assert "SIGINT: stopping now, leaving the evaluation" in " ".join(said.out.split())
    step = read_metrics(parts, "step")[-1]["step"]
    assert f"interrupted during the evaluation at step {step};" in " ".join(said.err.split())
    checkpoints = [p.name for p in Path("parts/tiny/checkpoints").iterdir()]
    assert checkpoints == [f"step-{step:07d}"]
    assert read_metrics(parts, "eval") == []
    assert train(path, "--set", "OUTPUT.dir=parts", "--resume", "auto") == 0
    assert f"step {step}: evaluating again (the run stopped during it)" in capsys.readouterr().out

    def same(kind: str, fields: tuple[str, ...]) -> None:
        runs = [[[r[f] for f in fields] for r in read_metrics(m, kind)] for m in (whole, parts)]
        assert runs[0] == runs[1] and runs[0]

    same("step", ("step", "loss", "lr", "grad_norm"))
    same("eval", ("step", "val_loss", "accuracy"))
    same("set", ("step", "field", "after"))


def test_a_second_ctrl_c_while_the_checkpoint_is_written_quits_leaving_the_one_before(
    project, monkeypatch, capsys
):
    """The first Ctrl-C (at step 5) asks for a checkpoint; the second, while it is written,
    quits at once (exit 130): the half-written checkpoint leaves no trace, the one of step 4
    is whole, and --resume auto goes on from it with the uninterrupted run's losses."""
    from okto.training import checkpoint as ckpt

    settings = "max_steps: 6 save_steps: 2"
    whole = project(train=settings)
    assert train(whole, "--set", "OUTPUT.dir=whole") == 0
    save_file, first = ckpt.save_file, []

    def ctrl_c(self, text):
        first.append(self.step)
        os.kill(os.getpid(), signal.SIGINT)

    def ctrl_c_again(*args, **kwargs):
        if first:
            os.kill(os.getpid(), signal.SIGINT)
        save_file(*args, **kwargs)

    stopped = project(
        train=settings, extra='CONTROL { IF step == 5 { LOG "now" } }', name="stop.okt"
    )
    with monkeypatch.context() as patches:
        patches.setattr(Trainer, "log", ctrl_c)
        patches.setattr(ckpt, "save_file", ctrl_c_again)
        assert train(stopped) == 130
    assert first == [5] and "interrupted" in capsys.readouterr().err
    folder = Path("runs/tiny/checkpoints")
    assert sorted(p.name for p in folder.iterdir()) == ["step-0000002", "step-0000004"]
    assert train(whole, "--resume", "auto") == 0
    losses = [(r["step"], r["loss"]) for r in read_metrics(METRICS, "step")]
    expected = [
        (r["step"], r["loss"]) for r in read_metrics(Path("whole/tiny/metrics.jsonl"), "step")
    ]
    assert losses == expected  # each step once: the stopped run's step 5 was dropped on resume
