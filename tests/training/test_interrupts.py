"""Ctrl-C and SIGTERM past the last step: the final evaluation and the final saves. The run
stops as interrupted with the signal's exit code, keeps a checkpoint of the last step, and
--resume auto finishes it."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from okto.training import run as run_module
from okto.training.loop import Trainer
from okto.training.metrics import read_metrics
from tests.training.conftest import train

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
    """It ended with a bare 'terminated (SIGTERM)': no summary, no word of the checkpoint."""

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)

    path = project(extra="EXPORT { }")
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
