"""Training in several processes on the CPU (gloo): the job computes what one process
computes with the same global batch, its checkpoints (DCP) resume on another number of
processes, and a failing process ends the job at once with its message.

`okto train --gpus 2` runs once through the real launcher (torchrun, new interpreters);
the other jobs fork this process into ranks, set up as torchrun sets up its processes,
which skips the seconds each new interpreter spends importing torch and transformers.

A job of N processes with batch_size B and accumulation A matches one process with B and
N x A: each micro-batch holds the same rows, so the loss averages the same means.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

from okto.cli import main
from okto.errors import RunError
from okto.training.distributed import record_failure
from okto.training.launch import first_failure
from okto.training.loop import Trainer
from okto.training.metrics import read_metrics
from tests.training.conftest import sentences, steps, train

# No dropout, so runs in different numbers of processes draw nothing at random.
MODEL = (
    'architecture: "gpt2" pretrained: false '
    "config { n_layer: 2 n_head: 2 n_embd: 64 resid_pdrop: 0 embd_pdrop: 0 attn_pdrop: 0 }"
)
SCHEDULE = 'max_steps: 6 scheduler: "cosine" warmup_steps: 2 save_steps: 3'
FIELDS = ("loss", "grad_norm", "lr")


def curve(run: Path) -> list[tuple]:
    return [(r["step"], *(r[f] for f in FIELDS)) for r in steps(run)]


def assert_same_curve(actual: list[tuple], expected: list[tuple]) -> None:
    assert [r[0] for r in actual] == [r[0] for r in expected]
    torch.testing.assert_close(
        torch.tensor([r[1:] for r in actual], dtype=torch.float64),
        torch.tensor([r[1:] for r in expected], dtype=torch.float64),
        rtol=1e-5,
        atol=1e-5,
    )


def assert_same_evaluations(actual: Path, expected: Path) -> None:
    """The validation figures over every row, whichever process scored which."""
    a, b = (read_metrics(run / "metrics.jsonl", "eval") for run in (actual, expected))
    assert [r["step"] for r in a] == [r["step"] for r in b] and a
    for x, y in zip(a, b, strict=True):
        assert x["val_loss"] == pytest.approx(y["val_loss"], rel=1e-5)
        assert x["accuracy"] == pytest.approx(y["accuracy"])


def assert_same_weights(actual: Path, expected: Path) -> None:
    a, b = (
        load_file(str(actual / "model.safetensors")),
        load_file(str(expected / "model.safetensors")),
    )
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank(rank: int, world: int, port: int, argv: list[str], before, errors) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    if errors:
        os.environ["TORCHELASTIC_ERROR_FILE"] = str(errors[rank])
    code = 1
    try:
        if before is not None:
            before(rank)
        code = main(argv)
    finally:
        os._exit(code)


def run_ranks(
    world: int, *argv: str, before=None, errors: list[Path] | None = None, timeout: float = 120
) -> list[int]:
    """`okto` with `argv` in `world` processes forked from this one (spawned after CUDA was
    used here), set up as torchrun sets up its processes (`before(rank)` runs first in
    each; `errors`: torchrun's error files); their exit codes."""
    # A process that has used CUDA cannot be forked into processes that use it again.
    start = "spawn" if torch.cuda.is_initialized() else "fork"
    context = multiprocessing.get_context(start)
    port = free_port()
    processes = [
        context.Process(target=_rank, args=(r, world, port, list(argv), before, errors))
        for r in range(world)
    ]
    for process in processes:
        process.start()
    deadline = time.monotonic() + timeout
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.kill()
    return [process.exitcode for process in processes]


def okto_cli(*argv: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """`python -m okto ...` in a new process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "okto", *argv], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def reference(project):
    """One process, batch 4 x accumulation 4: the run the jobs below must reproduce."""

    def run() -> Path:
        path = project(train=SCHEDULE, model=MODEL)
        assert train(path, "--set", "OUTPUT.dir=one", "--set", "TRAIN.gradient_accumulation=4") == 0
        return Path("one/tiny")

    return run


@pytest.mark.slow
def test_okto_train_gpus_2_matches_one_process_and_resumes_elsewhere(project, reference):
    """The real path: `okto train --gpus 2` launches torchrun; DDP over gloo, each process
    accumulating 2 micro-batches (the first without an all-reduce)."""
    one = reference()
    path = project(train=f"{SCHEDULE} gradient_accumulation: 2", model=MODEL)
    done = okto_cli("train", "-f", str(path), "--gpus", "2", "--set", "OUTPUT.dir=two")
    assert done.returncode == 0, done.stderr
    assert "parallel 2 processes, ddp over gloo" in done.stdout
    assert "per process x 2" in done.stdout and "GPU)" not in done.stdout  # CPU processes
    two = Path("two/tiny")
    assert_same_curve(curve(two), curve(one))  # rank 0 alone wrote the metrics: once a step
    assert_same_evaluations(two, one)  # each process scored its share of the validation rows
    assert_same_weights(two / "final", one / "final")
    record = steps(two)[-1]
    assert record["processes"] == 2
    assert record["tokens_per_second_per_gpu"] == pytest.approx(record["tokens_per_second"] / 2)
    middle = two / "checkpoints" / "step-0000003"
    assert (middle / "dcp" / ".metadata").is_file()
    assert sorted(p.name for p in (middle / "rng").iterdir()) == ["rank-00000.pt", "rank-00001.pt"]
    # The same checkpoint, resumed in one process: its accumulation doubles, the run goes on.
    assert train(path, "--set", "OUTPUT.dir=two", "--resume", str(middle)) == 0
    assert_same_curve(curve(two)[-3:], curve(one)[-3:])


@pytest.mark.slow
@pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="Triton's interpreter runs the kernels here; tests/conftest.py sets it only without "
    "CUDA (the two-GPU tests below run them under DDP and FSDP on GPUs)",
)
def test_the_planners_kernels_train_under_ddp_and_fsdp(project, monkeypatch, capfd):
    """okto's Triton kernels in 2 processes, DDP and FSDP, give the loss and the gradient
    norm of PyTorch's own ops in one process. Triton's interpreter is slow, so the model is
    small and the kernels are LayerNorm and the LM head fused with the loss (its weight
    tied to the embeddings): custom ops whose backward makes the parameters' gradients."""
    text = " ".join(sentences(12, seed=5))  # one record: no validation split, no evaluation
    small = MODEL.replace("n_embd: 64", "n_embd: 32").replace("n_layer: 2", "n_layer: 1")
    run = 'max_steps: 1 save_strategy: "no"'
    kinds = 'ACCELERATE { gemm: "native" attention: "native" activation: "native" }'
    path = project(
        train=f"{run} gradient_accumulation: 2", model=small, extra=kinds, records=[{"text": text}]
    )
    native = project(train=f"{run} gradient_accumulation: 4", model=small, name="native.okt")
    short = ("--set", "DATASET.max_length=16", "--set", "TRAIN.batch_size=1")
    assert train(native, "--set", "OUTPUT.dir=native", *short) == 0
    (expected,) = steps(Path("native/tiny"))
    monkeypatch.setenv("OKTO_KERNELS", "triton")
    for strategy in ("ddp", "fsdp"):
        job = ("--set", f"TRAIN.strategy={strategy}", "--set", f"OUTPUT.dir={strategy}")
        assert run_ranks(2, "train", "-f", str(path), *job, *short) == [0, 0]
        plan = capfd.readouterr().out
        assert f"{strategy} over gloo" in plan
        assert re.search(r"layernorm\s*│\s*okto", plan)
        assert re.search(r"cross_entropy\s*│\s*okto", plan)
        (actual,) = steps(Path(f"{strategy}/tiny"))
        for field in ("loss", "grad_norm"):
            assert actual[field] == pytest.approx(expected[field], rel=1e-4), (strategy, field)


@pytest.mark.slow
def test_fsdp_matches_one_process_and_its_checkpoint_reshards(project, reference):
    one = reference()
    path = project(train=f'{SCHEDULE} gradient_accumulation: 2 strategy: "fsdp"', model=MODEL)
    assert run_ranks(2, "train", "-f", str(path), "--set", "OUTPUT.dir=fsdp") == [0, 0]
    fsdp = Path("fsdp/tiny")
    assert_same_curve(curve(fsdp), curve(one))
    assert_same_evaluations(fsdp, one)
    assert_same_weights(fsdp / "final", one / "final")
    assert json.loads((fsdp / "final" / "config.json").read_text())["architectures"] == [
        "GPT2LMHeadModel"
    ]
    # Two shards, read back by one process.
    middle = fsdp / "checkpoints" / "step-0000003"
    assert train(path, "--set", "OUTPUT.dir=resharded", "--resume", str(middle)) == 0
    assert_same_curve(curve(Path("resharded/tiny")), curve(one)[-3:])


@pytest.mark.slow
def test_a_finished_two_process_run_goes_on_longer_in_one(project, reference):
    """A finished 3-step job of two processes, resumed in one for the reference's 6 steps,
    computes the reference's steps 4-6 (both cosines warm up over steps 1-2 and start at
    step 3): step 4 runs at the 6-step schedule's rate, not the saved 0."""
    one = reference()
    path = project(train=f"{SCHEDULE} gradient_accumulation: 2", model=MODEL)
    short = ("--set", "OUTPUT.dir=two", "--max-steps", "3")
    assert run_ranks(2, "train", "-f", str(path), *short) == [0, 0]
    two = Path("two/tiny")
    assert steps(two)[-1]["lr"] == 0.0
    assert train(path, "--set", "OUTPUT.dir=two", "--resume", "auto") == 0
    assert_same_curve(curve(two)[3:], curve(one)[3:])
    assert_same_weights(two / "final", one / "final")


def _fail_on_rank_1_at_step_2(rank: int) -> None:
    if rank == 1:
        original = Trainer._update

        def failing(self, gradients, signals):
            if self.step == 2:
                Path("failed-at").write_text(str(time.time()))
                raise RunError("rank 1 cannot go on: its disk is full")
            return original(self, gradients, signals)

        Trainer._update = failing


@pytest.mark.slow
def test_a_failing_rank_ends_the_job_with_its_message(project, capfd, tmp_path):
    """Rank 1 fails at step 2; rank 0, in a collective with it, stops at once too, and what
    torchrun reads back from their error files names rank 1, its message and its code."""
    path = project(train="max_steps: 50", model=MODEL)
    errors = [tmp_path / f"error-{rank}.json" for rank in (0, 1)]
    codes = run_ranks(2, "train", "-f", str(path), before=_fail_on_rank_1_at_step_2, errors=errors)
    ended = time.time()
    assert codes == [1, 3]
    assert ended - float(Path("failed-at").read_text()) < 10
    err = capfd.readouterr().err
    assert "[rank 1] rank 1 cannot go on: its disk is full" in err
    assert "[rank 0] stopped: another process of the job failed" in err
    assert "Traceback" not in err
    failures = {r: ProcessFailure(r, 0, code, str(errors[r])) for r, code in enumerate(codes)}
    assert first_failure(failures) == (1, 3, "rank 1 cannot go on: its disk is full")


def _crash_on_rank_1_at_step_2(rank: int) -> None:
    if rank == 1:
        original = Trainer._update

        def crashing(self, gradients, signals):
            if self.step == 2:
                os._exit(7)  # a crash: no exception, no error file
            return original(self, gradients, signals)

        Trainer._update = crashing


@pytest.mark.slow
def test_a_rank_dying_without_a_word_is_the_cause_not_the_peer_it_left(project, tmp_path):
    """Rank 1 dies at once (a segfault, os._exit, the OOM killer): no error file, and
    torchrun notes its failure after rank 0 wrote its own, "another process failed"."""
    path = project(train="max_steps: 50", model=MODEL)
    errors = [tmp_path / f"error-{rank}.json" for rank in (0, 1)]
    codes = run_ranks(2, "train", "-f", str(path), before=_crash_on_rank_1_at_step_2, errors=errors)
    assert codes == [1, 7]
    failures = {r: ProcessFailure(r, 0, code, str(errors[r])) for r, code in enumerate(codes)}
    assert first_failure(failures) == (1, 7, "its output above says why")


def test_a_rank_torchrun_stopped_is_not_the_cause(tmp_path, monkeypatch):
    """Rank 0 lost its peer, wrote so and was still exiting when torchrun's SIGTERM came;
    rank 1, which crashed, left no error file, and its time is torchrun's, later."""
    lost, crashed = tmp_path / "error-0.json", tmp_path / "error-1.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(lost))
    record_failure(RuntimeError("Connection closed by peer [127.0.0.1]:29500"))
    failures = {0: ProcessFailure(0, 0, -15, str(lost)), 1: ProcessFailure(1, 0, 7, str(crashed))}
    failures[1].timestamp += 1  # torchrun's whole seconds: it noticed in the next one
    assert first_failure(failures) == (1, 7, "its output above says why")


def test_the_largest_seed_runs_in_every_process(project):
    """Rank 1 seeded numpy with 2**32 (the seed plus its rank): a ValueError traceback."""
    path = project(train="max_steps: 2", model=MODEL)
    assert run_ranks(2, "train", "-f", str(path), "--set", "TRAIN.seed=4294967295") == [0, 0]


def test_gpus_without_a_gpu_or_an_explicit_cpu_is_exit_4(project, capsys):
    if torch.cuda.is_available():
        pytest.skip("checks a machine without a GPU")
    assert train(project(device="auto"), "--gpus", "2") == 4
    err = capsys.readouterr().err
    assert "asks for 2 GPUs, but this machine has none" in err and "TRAIN.device=cpu" in err


def test_python_api_outside_a_launcher_says_how_to_start_processes(project):
    import okto
    from okto.errors import UsageError

    with pytest.raises(UsageError, match="starts them through torchrun"):
        okto.train(project(extra="ENV { gpus: 2 }"))


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_gpus_follow_one_with_the_same_global_batch(project, strategy):
    """NCCL on two GPUs, bf16, okto's kernels: the losses follow one GPU's (bf16 sums in
    another order, hence the tolerance), and a checkpoint of the two resumes on one."""
    one = project(train=f"{SCHEDULE} gradient_accumulation: 4", model=MODEL, device="gpu")
    assert train(one, "--set", "OUTPUT.dir=one") == 0
    settings = f'{SCHEDULE} gradient_accumulation: 2 strategy: "{strategy}"'
    path = project(train=settings, model=MODEL, device="gpu", name="two.okt")
    done = okto_cli("train", "-f", str(path), "--gpus", "2", "--set", "OUTPUT.dir=two")
    assert done.returncode == 0, done.stderr
    assert f"parallel 2 processes, {strategy} over nccl" in done.stdout
    two = Path("two/tiny")
    losses = [[r[1]] for r in curve(two)]
    torch.testing.assert_close(losses, [[r[1]] for r in curve(Path("one/tiny"))], rtol=0, atol=2e-2)
    middle = two / "checkpoints" / "step-0000003"
    assert train(path, "--set", "OUTPUT.dir=two", "--resume", str(middle)) == 0
    assert [r[0] for r in curve(two)[-3:]] == [4, 5, 6]


@pytest.mark.slow
def test_a_one_process_checkpoint_resumed_in_two_says_the_batch_it_runs(
    project, reference, capfd
):
    """The job's batch line was printed from the file's values before the resume regrouped
    them: `4 x 2 x 4` for a job that ran 4 x 2 x 2."""
    reference()  # batch 4 x accumulation 4, one process
    path = project(train=SCHEDULE, model=MODEL)
    middle = Path("one/tiny/checkpoints/step-0000003")
    resumed = ("--set", "TRAIN.gradient_accumulation=4", "--resume", str(middle))
    assert run_ranks(2, "train", "-f", str(path), "--set", "OUTPUT.dir=two", *resumed) == [0, 0]
    out = " ".join(capfd.readouterr().out.split())
    assert "batch_size x gradient_accumulation 4 x 4 -> 4 x 2 per process" in out
    assert "global batch 4 x 2 x 2 sequences" in out
