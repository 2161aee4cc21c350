"""The loop that looks one step ahead (fused AdamW: the next step's passes are queued before
this step's loss is read) trains exactly as the loop that reads the loss first: the same
losses, rates, norms and weights, through rules that change the batch size and the
accumulation, evaluations, checkpoints, skipped non-finite updates and a resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from okto.training import loop
from okto.training.metrics import read_metrics
from tests.training.conftest import steps, train

FIELDS = ("step", "loss", "lr", "grad_norm", "epoch")


def curve(run: Path) -> list[tuple]:
    return [tuple(record[f] for f in FIELDS) for record in steps(run)]


@pytest.fixture
def looked_ahead(monkeypatch):
    """Whether each Trainer of the test looked ahead, in the order they were made. The
    CPU, where runs are repeatable, looks ahead here as a GPU does."""
    monkeypatch.setattr(loop, "queues_work", lambda device: True)
    seen: list[bool] = []
    fit = loop.Trainer.fit

    def spy(self):
        seen.append(self.looks_ahead)
        return fit(self)

    monkeypatch.setattr(loop.Trainer, "fit", spy)
    return seen


def both_ways(path: Path, monkeypatch, *args: str) -> tuple[int, int]:
    """Exit codes of the run looking ahead (into ahead/) and reading first (into read/)."""
    ahead = train(path, "--set", "OUTPUT.dir=ahead", *args)
    with monkeypatch.context() as patch:
        patch.setattr(loop, "folds_clipping", lambda optimizer: False)
        read = train(path, "--set", "OUTPUT.dir=read", *args)
    return ahead, read


def weights(run: Path):
    return load_file(str(next(run.glob("final/**/model.safetensors"))))


def test_rules_evaluations_and_checkpoints_see_the_same_run(project, monkeypatch, looked_ahead):
    # Dropout on (GPT-2's default), so the random state at every point matters.
    path = project(
        train='max_steps: 14 scheduler: "cosine" warmup_steps: 2 eval_steps: 3 save_steps: 4',
        extra="""CONTROL {
  IF step == 4 { SET batch_size = 6 }
  IF step == 6 { SET gradient_accumulation = 2 }
  IF step == 9 { SET gradient_clip = 0.5 }
  EVERY 5 steps { SAVE "at-{step}" }
}""",
    )
    assert both_ways(path, monkeypatch) == (0, 0)
    assert looked_ahead == [True, False]
    assert curve(Path("ahead/tiny")) == curve(Path("read/tiny"))
    assert len(curve(Path("ahead/tiny"))) == 14
    for run in ("ahead", "read"):  # the batch size and accumulation took effect after step 4, 6
        assert steps(Path(f"{run}/tiny"))[-1]["epoch"] > steps(Path(f"{run}/tiny"))[3]["epoch"] * 3
    first, second = weights(Path("ahead/tiny")), weights(Path("read/tiny"))
    assert first.keys() == second.keys()
    assert all((first[k] == second[k]).all() for k in first)


def test_a_non_finite_update_is_skipped_on_the_device(project, monkeypatch, looked_ahead):
    path = project(
        train='max_steps: 8 scheduler: "constant"',
        extra="""STABILITY { stop_if_nan: false stop_if_diverges: false }
CONTROL {
  IF step == 2 { SET learning_rate = 1e30 }
  IF step == 3 { SET learning_rate = 1e-3 }
}""",
    )
    assert both_ways(path, monkeypatch) == (0, 0)
    assert looked_ahead == [True, False]
    assert curve(Path("ahead/tiny")) == curve(Path("read/tiny"))
    # Step 3's update took the 1e30 rate: from step 4 on the loss is NaN, every update skipped.
    for run in ("ahead", "read"):
        skipped = read_metrics(Path(f"{run}/tiny/metrics.jsonl"), "nan")
        assert [r["step"] for r in skipped] == [4, 5, 6, 7, 8]
    # every step is logged; the skipped ones' losses (and norms) as null
    assert [record[1] is None for record in curve(Path("ahead/tiny"))] == [False] * 3 + [True] * 5


def test_resume_from_a_stop_while_a_step_was_queued(project, looked_ahead):
    schedule = 'max_steps: 10 scheduler: "cosine" warmup_steps: 2 save_steps: 5'
    whole = project(train=schedule)
    assert train(whole, "--set", "OUTPUT.dir=whole") == 0
    stopped = project(train=schedule, extra="CONTROL { IF step == 7 { STOP } }", name="s.okt")
    assert train(stopped, "--set", "OUTPUT.dir=parts") == 0
    assert train(whole, "--set", "OUTPUT.dir=parts", "--resume", "auto") == 0
    assert looked_ahead == [True, True, True]
    assert curve(Path("parts/tiny")) == curve(Path("whole/tiny"))


def test_the_cpu_reads_each_step_first(project, monkeypatch):
    """Looking ahead on the CPU only moves each step's passes into the step before, which
    skewed the per-step rates; it is a GPU's."""
    seen = []
    fit = loop.Trainer.fit
    monkeypatch.setattr(
        loop.Trainer, "fit", lambda self: seen.append(self.looks_ahead) or fit(self)
    )
    assert train(project(train="max_steps: 2")) == 0
    assert seen == [False]
    assert loop.queues_work(torch.device("cuda")) and not loop.queues_work(torch.device("cpu"))
