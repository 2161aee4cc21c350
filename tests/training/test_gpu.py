"""The same tiny runs on a CUDA GPU, with the planner's kernels, bf16 autocast and input
copies on a side stream (skipped without CUDA; `python -m pytest -m gpu`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from okto.training.metrics import read_metrics
from tests.training.conftest import steps, train

pytestmark = pytest.mark.gpu
GPU = ("--set", "BLAS.streams=2", "--set", "ACCELERATE.fused_ops=true")
SCHEDULE = 'max_steps: 12 scheduler: "cosine" warmup_steps: 2 save_steps: 4'


def test_trains_on_the_gpu_with_the_kernels(project):
    path = project(train="max_steps: 30", device="cuda")
    assert train(path, *GPU, "--show-tflops") == 0
    losses = [record["loss"] for record in steps()]
    assert losses[-1] < losses[0] - 1.0
    start = read_metrics(Path("runs/tiny/metrics.jsonl"), "start")[0]
    assert start["device"].startswith("cuda") and start["precision"] == "bf16"
    summary = read_metrics(Path("runs/tiny/metrics.jsonl"), "summary")[0]
    assert summary["data_wait_percent"] < 50
    assert (Path("runs/tiny/final") / "model.safetensors").is_file()


def test_resume_on_the_gpu_follows_the_uninterrupted_run(project):
    whole = project(train=SCHEDULE, device="cuda")
    assert train(whole, *GPU, "--set", "OUTPUT.dir=whole") == 0
    stopped = project(
        train=SCHEDULE, extra="CONTROL { IF step == 6 { STOP } }", name="stop.okt", device="cuda"
    )
    assert train(stopped, *GPU, "--set", "OUTPUT.dir=parts") == 0
    assert train(whole, *GPU, "--set", "OUTPUT.dir=parts", "--resume", "auto") == 0
    expected = [r["loss"] for r in steps(Path("whole/tiny"))]
    resumed = [r["loss"] for r in steps(Path("parts/tiny"))]
    # GPU reductions may differ in the last bits between runs; a lost state would not.
    assert resumed == pytest.approx(expected, rel=1e-3)


def test_compiled_run_with_the_kernels(project):
    """OPTIMIZE.compile over the patched model: the loss falls as in the eager run."""
    path = project(train="max_steps: 30", device="cuda")
    assert train(path, *GPU, "--set", "OPTIMIZE.compile=true") == 0
    losses = [record["loss"] for record in steps()]
    assert losses[-1] < losses[0] - 1.0


def test_cuda_graphs_while_looking_ahead_resume_as_the_uninterrupted_run(project):
    """The step replayed from CUDA graphs while the loop queues the next step before reading
    this one's loss: a run stopped with a step queued, and resumed, follows the
    uninterrupted run, through evaluations and a rule that changes the batch size."""
    schedule = f"{SCHEDULE} eval_steps: 5"
    rule = "IF step == 3 { SET batch_size = 6 }"
    graphs = (*GPU, "--set", "OPTIMIZE.cuda_graphs=true")
    whole = project(train=schedule, extra=f"CONTROL {{ {rule} }}", device="cuda")
    assert train(whole, *graphs, "--set", "OUTPUT.dir=whole") == 0
    stopped = project(
        train=schedule,
        extra=f"CONTROL {{ {rule} IF step == 7 {{ STOP }} }}",
        name="stop.okt",
        device="cuda",
    )
    assert train(stopped, *graphs, "--set", "OUTPUT.dir=parts") == 0
    assert train(whole, *graphs, "--set", "OUTPUT.dir=parts", "--resume", "auto") == 0
    expected = [r["loss"] for r in steps(Path("whole/tiny"))]
    assert len(expected) == 12
    assert [r["loss"] for r in steps(Path("parts/tiny"))] == pytest.approx(expected, rel=1e-3)
    evals = read_metrics(Path("whole/tiny/metrics.jsonl"), "eval")
    assert [e["step"] for e in evals] == [5, 10, 12]
