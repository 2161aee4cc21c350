"""Checkpoints and resuming: a run stopped at step k and resumed logs exactly the losses of
an uninterrupted run (data order, RNG, optimizer and schedule restored), and a checkpoint
cut short mid-write leaves the previous one whole."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel

import okto
from okto.errors import UsageError
from okto.training import checkpoint as ckpt
from okto.training.loop import Trainer
from okto.training.metrics import read_metrics
from tests.training.conftest import steps, train

# Dropout on (GPT-2's default 0.1), so the RNG state matters; cosine so the schedule does.
SCHEDULE = 'max_steps: 12 scheduler: "cosine" warmup_steps: 2 save_steps: 4'
FIELDS = ("step", "loss", "lr", "grad_norm")
SHUFFLE_OFF = ("--set", "DATASET.shuffle=false")
CHECKPOINTS = Path("runs/tiny/checkpoints")


def curve(run: Path) -> list[tuple]:
    return [tuple(record[f] for f in FIELDS) for record in steps(run)]


def test_resume_after_a_stop_reproduces_the_uninterrupted_losses(project):
    whole = project(train=SCHEDULE)
    assert train(whole, "--set", "OUTPUT.dir=whole") == 0
    stopped = project(train=SCHEDULE, extra="CONTROL { IF step == 6 { STOP } }", name="stop.okt")
    assert train(stopped, "--set", "OUTPUT.dir=parts") == 0
    assert [r["step"] for r in steps(Path("parts/tiny"))] == [1, 2, 3, 4, 5, 6]
    assert train(whole, "--set", "OUTPUT.dir=parts", "--resume", "auto") == 0
    parts, whole = curve(Path("parts/tiny")), curve(Path("whole/tiny"))
    assert parts[3:] == whole[3:] and [r[:2] for r in parts] == [r[:2] for r in whole]
    assert len(curve(Path("whole/tiny"))) == 12


def test_set_on_resume_wins_over_the_checkpoint(project, capsys):
    """--set values of live TRAIN fields apply from the resumed step (said, and written as
    `set` events); a different step count remakes the schedule, with a warning."""
    from okto.training.metrics import read_metrics

    stopped = project(train=SCHEDULE, extra="CONTROL { IF step == 4 { STOP } }")
    assert train(stopped) == 0
    capsys.readouterr()
    overrides = ("--set", "TRAIN.batch_size=2", "--set", "TRAIN.learning_rate=1e-4")
    resumed = ("--resume", "auto", "--max-steps", "6", *overrides)
    assert train(project(train=SCHEDULE, name="resume.okt"), *resumed) == 0
    out = capsys.readouterr()
    assert "--set    step 4: batch_size 4 -> 2" in out.out
    assert "planned for 12 steps, this one for 6" in " ".join((out.out + out.err).split())
    changes = {r["field"]: r for r in read_metrics(Path("runs/tiny/metrics.jsonl"), "set")}
    assert changes["batch_size"]["after"] == 2 and changes["batch_size"]["by"] == "--set"
    assert changes["learning_rate"]["after"] == 1e-4
    assert steps()[4]["lr"] <= 1e-4  # step 5: the new rate, the schedule going on from it


def test_a_longer_resumed_run_follows_the_longer_schedule(project, capsys):
    """A finished 3-step cosine run resumed as a 12-step one computes the 12-step run: with
    2 warmup steps both schedules give steps 1-3 the same rates, and from step 4 on the
    resumed run has the rates of a fresh 12-step run. Step 4 used to run at the saved rate
    (0, the end of the 3-step cosine), the logged rates already being the 12-step ones.
    (Step 3 logs the rate after it: 0 there, as its run ended.)"""
    whole = project(train=SCHEDULE)
    assert train(whole, "--set", "OUTPUT.dir=whole") == 0
    assert train(whole, "--set", "OUTPUT.dir=parts", "--max-steps", "3") == 0
    assert steps(Path("parts/tiny"))[-1]["lr"] == 0.0  # its cosine ended
    capsys.readouterr()
    assert train(whole, "--set", "OUTPUT.dir=parts", "--resume", "auto") == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "from step 4 on, the learning rate follows a 12-step schedule" in said
    parts, whole = curve(Path("parts/tiny")), curve(Path("whole/tiny"))
    assert parts[3:] == whole[3:] and [r[:2] for r in parts] == [r[:2] for r in whole]
    final = [
        load_file(str(Path(run, "tiny/final/model.safetensors"))) for run in ("parts", "whole")
    ]
    assert all(torch.equal(final[0][name], final[1][name]) for name in final[1])


def test_a_fresh_run_keeps_an_earlier_runs_checkpoints_aside(project, capsys):
    """Training again without --resume moves the earlier checkpoints into earlier-*/ (they
    used to be deleted), where --resume auto does not look, and that run's metrics and log
    with them (the new run overwrote them, so the kept checkpoints had no record)."""
    first = project(train=SCHEDULE)
    assert train(first) == 0
    saved = {p.name: (p / ckpt.WEIGHTS).read_bytes() for p in ckpt.checkpoints_in(CHECKPOINTS)}
    assert sorted(saved) == ["step-0000004", "step-0000008", "step-0000012"]
    capsys.readouterr()
    assert train(first, "--max-steps", "4") == 0
    said = " ".join(capsys.readouterr().out.split())
    (kept,) = CHECKPOINTS.glob("earlier-*")
    assert f"kept 3 checkpoint(s) of an earlier run in {kept}, with its metrics and log" in said
    checkpoints = ckpt.checkpoints_in(kept)
    assert {p.name: (p / ckpt.WEIGHTS).read_bytes() for p in checkpoints} == saved
    # the earlier run's record, which the new run started anew
    assert [r["step"] for r in steps(kept)] == list(range(1, 13))
    assert "finished 12 steps" in (kept / "train.log").read_text()
    assert [r["step"] for r in steps()] == [1, 2, 3, 4]
    assert [p.name for p in ckpt.checkpoints_in(CHECKPOINTS)] == ["step-0000004"]
    assert ckpt.latest_checkpoint(CHECKPOINTS).name == "step-0000004"
    assert train(first, "--max-steps", "4") == 0  # a second earlier set gets its own folder
    assert len(list(CHECKPOINTS.glob("earlier-*"))) == 2


def test_sigterm_saves_a_checkpoint_and_resume_continues(project, monkeypatch, capsys):
    def log_and_kill(self, text):
        os.kill(os.getpid(), signal.SIGTERM)

    path = project(train=SCHEDULE, extra='CONTROL { IF step == 5 { LOG "now" } }')
    with monkeypatch.context() as patches:  # undo() would also undo the test's own folder
        patches.setattr(Trainer, "log", log_and_kill)
        assert train(path) == 143
    assert "resume with --resume auto" in capsys.readouterr().err
    assert ckpt.latest_checkpoint(Path("runs/tiny/checkpoints")).name == "step-0000005"
    assert not Path("runs/tiny/final").exists()
    assert train(path, "--resume", "auto") == 0
    assert [r["step"] for r in steps()] == list(range(1, 13))


def test_a_checkpoint_cut_short_leaves_the_previous_one(tmp_path, monkeypatch):
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50))
    folder = tmp_path / "checkpoints"
    first = ckpt.save_checkpoint(folder, 1, model, {"optimizer": {}}, {"step": 1})

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", fail)
    with torch.no_grad():
        model.transformer.wte.weight.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(folder, 2, model, {"optimizer": {}}, {"step": 2})
    assert sorted(p.name for p in folder.iterdir()) == ["step-0000001"]
    assert ckpt.latest_checkpoint(folder) == first
    weights, states, trainer = ckpt.read_checkpoint(first)
    assert trainer == {"step": 1} and "rng" in states
    assert not torch.equal(weights["transformer.wte.weight"], model.transformer.wte.weight)


def test_a_leftover_temporary_folder_is_never_read_and_is_swept(tmp_path):
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50))
    folder = tmp_path / "checkpoints"
    (folder / ".tmp-step-0000009-123").mkdir(parents=True)  # a killed write
    assert ckpt.latest_checkpoint(folder) is None
    ckpt.save_checkpoint(folder, 3, model, {}, {"step": 3})
    assert ckpt.latest_checkpoint(folder).name == "step-0000003"
    assert not (folder / ".tmp-step-0000009-123").exists()


def test_resuming_past_the_runs_end_is_a_clear_error(project, capsys):
    """A 12-step checkpoint resumed with --max-steps 6 said 'step 12 of 6', warned that
    steps from 13 on would follow a 6-step schedule, and 'finished 12 steps' with exit 0."""
    path = project(train=SCHEDULE)
    assert train(path) == 0
    capsys.readouterr()
    assert train(path, "--resume", "auto", "--max-steps", "6") == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "step-0000012 is at step 12, past this run's 6 steps" in err
    assert [r["step"] for r in steps()] == list(range(1, 13))  # the metrics are untouched


def test_resuming_on_other_data_is_said(project, capsys):
    """The same rows in another order (shuffle off) resumed in silence: only a change of
    the row count was said."""
    path = project(train=SCHEDULE, extra="CONTROL { IF step == 4 { STOP } }")
    assert train(path) == 0
    capsys.readouterr()
    assert train(project(train=SCHEDULE, name="on.okt"), "--resume", "auto", *SHUFFLE_OFF) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "the training data changed since the checkpoint (its files, the tokenizer" in said


def test_live_values_edited_in_the_file_apply_on_resume(project, capsys):
    """A batch size or learning rate changed in the file before --resume auto was ignored
    in silence (the checkpoint's values went on); it now applies from the resumed step, as
    --set does, while a value a CONTROL rule moved and the file left alone stays moved."""
    rules = "CONTROL { IF step == 2 { SET gradient_clip = 0.5 } IF step == 4 { STOP } }"
    path = project(train=SCHEDULE, extra=rules)
    assert train(path) == 0
    capsys.readouterr()
    text = path.read_text().replace("batch_size: 4", "batch_size: 2")
    path.write_text(text.replace("learning_rate: 3e-3", "learning_rate: 1e-4"))
    assert train(path, "--resume", "auto") == 0
    assert "file     step 4: batch_size 4 -> 2" in capsys.readouterr().out
    metrics = Path("runs/tiny/metrics.jsonl")
    events = [r["event"] for r in read_metrics(metrics) if r["event"] in ("start", "set")]
    assert events == ["start", "set", "start", "set", "set"]  # after the start they change
    changes = [(r["field"], r["after"], r["by"]) for r in read_metrics(metrics, "set")]
    assert changes == [
        ("gradient_clip", 0.5, "CONTROL"),  # not put back to the file's 1.0 on resume
        ("learning_rate", 1e-4, "file"),
        ("batch_size", 2, "file"),
    ]
    assert steps()[4]["lr"] <= 1e-4
    # 4 steps of 4 rows, then 8 of 2: the epoch is the share of the rows consumed
    rows = read_metrics(metrics, "start")[0]["rows"]
    assert steps()[-1]["epoch"] == pytest.approx((4 * 4 + 8 * 2) / rows)


def test_a_value_set_on_the_command_line_goes_on_when_resumed_without_it(project, capsys):
    """--set gives a run a value, not its file: resuming without repeating it keeps the
    checkpoint's value (the file was not edited)."""
    path = project(train=SCHEDULE, extra="CONTROL { IF step == 4 { STOP } }")
    assert train(path, "--set", "TRAIN.batch_size=2") == 0
    capsys.readouterr()
    assert train(path, "--resume", "auto") == 0
    assert "batch_size" not in capsys.readouterr().out
    rows = read_metrics(Path("runs/tiny/metrics.jsonl"), "start")[0]["rows"]
    assert steps()[-1]["epoch"] == pytest.approx(12 * 2 / rows)


def test_resuming_with_another_optimizer_is_refused(project, capsys):
    """SGD over AdamW's state stopped with a KeyError traceback at the first step."""
    assert train(project(train=SCHEDULE)) == 0
    capsys.readouterr()
    sgd = project(train=SCHEDULE + ' optimizer: "sgd"', name="sgd.okt")
    assert train(sgd, "--resume", "auto") == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "written by a run with optimizer adamw, this one has sgd" in err
    assert "Traceback" not in err


def test_a_refused_checkpoint_closes_the_metrics_file(project, monkeypatch):
    """okto.train refusing a checkpoint left the run's metrics file open in the process."""
    import okto
    from okto.errors import UsageError
    from okto.training.metrics import MetricsFile

    assert train(project(train=SCHEDULE)) == 0
    opened = []
    init, close = MetricsFile.__init__, MetricsFile.close

    def opening(self, *args, **kwargs):
        init(self, *args, **kwargs)
        opened.append(self)

    def closing(self):
        opened.remove(self)
        close(self)

    monkeypatch.setattr(MetricsFile, "__init__", opening)
    monkeypatch.setattr(MetricsFile, "close", closing)
    with pytest.raises(UsageError, match="past this run's 6 steps"):
        okto.train(project(train=SCHEDULE, name="short.okt"), max_steps=6, resume="auto")
    assert opened == []


def test_a_schedule_edited_in_the_file_applies_from_the_resumed_step(
    project, capsys, monkeypatch
):
    """The first resumed step ran at the rate the checkpoint's schedule had left, in
    silence; it now runs at the new schedule's rate for that step, with a warning: a linear
    run stopped at 6 of 12 and resumed as constant runs step 7 at the peak rate, not at
    linear's half of it."""
    train_fields = 'max_steps: 12 scheduler: "linear" save_steps: 6'
    path = project(train=train_fields, extra="CONTROL { IF step == 6 { STOP } }")
    assert train(path) == 0
    capsys.readouterr()
    rates = []
    update = Trainer._update

    def recording(self, gradients, signals):
        rates.append(self.optimizer.param_groups[0]["lr"])
        return update(self, gradients, signals)

    monkeypatch.setattr(Trainer, "_update", recording)
    edited = project(train=train_fields.replace("linear", "constant"), name="constant.okt")
    assert train(edited, "--resume", "auto") == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "TRAIN.scheduler is constant (it was linear): from step 7 on" in said
    assert rates == [3e-3] * 6  # steps 7 to 12; step 7 ran at 1.5e-3


@contextlib.contextmanager
def files_limited_to(size: int):
    """Writes past `size` bytes a file fail as on a full disk (EFBIG, SIGXFSZ ignored)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def test_a_checkpoint_write_that_fails_is_an_os_error_and_leaves_the_earlier_one(tmp_path):
    """On a full disk safetensors raises a SafetensorError and torch.save a RuntimeError,
    which the loop's OSError handler let through as a traceback."""
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=64, vocab_size=300))
    folder = tmp_path / "checkpoints"
    earlier = ckpt.save_checkpoint(folder, 1, model, {}, {"step": 1})
    big = {"optimizer": {"exp_avg": torch.zeros(200_000)}}  # state.pt past the limit
    for limit, states in ((50_000, {}), (600_000, big)):  # the weights, then state.pt
        with files_limited_to(limit), pytest.raises(OSError, match=r"writing failed: .*MB free"):
            ckpt.save_checkpoint(folder, 2, model, states, {"step": 2})
        assert [p.name for p in folder.iterdir()] == [earlier.name]  # no partial folder


def test_a_full_disk_while_saving_the_final_model_is_said_after_the_summary(project, capsys):
    """It ended the run with safetensors' traceback, the summary unshown."""
    path = project(train='max_steps: 2 save_strategy: "no"')
    with files_limited_to(400_000):  # the data and the tokenizer fit, the weights (700 kB) not
        assert train(path) == 1
    out, err = capsys.readouterr()
    assert "finished 2 steps" in out
    said = " ".join(err.split())
    assert "training ended, but the trained model could not be written to runs/tiny/final" in said
    assert "no checkpoint holds the trained weights" in said and "Traceback" not in err
    assert not Path("runs/tiny/final").exists()


def _disk_full_after_step_4(monkeypatch, then=lambda folder: None) -> None:
    """Checkpoints after step 4 fail as on a full disk, `then(folder)` first."""
    save = ckpt.save_checkpoint

    def full_after_the_first(folder, step, *args):
        if step > 4:
            then(folder)
            raise OSError(28, "No space left on device")
        return save(folder, step, *args)

    monkeypatch.setattr(ckpt, "save_checkpoint", full_after_the_first)


def test_a_full_disk_while_checkpointing_is_said_without_a_traceback(project, capsys, monkeypatch):
    """An OSError writing a checkpoint (a full disk) ended the run with a traceback."""
    _disk_full_after_step_4(monkeypatch)
    assert train(project(train=SCHEDULE)) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "could not write the checkpoint of step 8 in runs/tiny/checkpoints (No space left" in err
    assert "--resume auto continues from runs/tiny/checkpoints/step-0000004" in err
    assert "Traceback" not in err


def test_a_full_disk_beside_a_damaged_checkpoint_says_both(project, capsys, monkeypatch):
    """With a step-* folder spoilt by hand, looking for the last whole checkpoint raised its
    own UsageError from the full-disk handler, and the disk error went unsaid."""
    _disk_full_after_step_4(monkeypatch, then=lambda folder: (folder / "step-0000006").mkdir())
    assert train(project(train=SCHEDULE)) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "could not write the checkpoint of step 8 in runs/tiny/checkpoints (No space left" in err
    assert "step-0000006 is a" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("where", "said"),
    [
        ("file", "TRAIN.resume_from_checkpoint 'gone': no such"),
        ("flag", "--resume gone: no such"),
        ("python", "resume='gone': no such"),
    ],
)
def test_a_missing_checkpoint_is_named_by_what_asked_for_it(project, capsys, where, said):
    """A missing TRAIN.resume_from_checkpoint folder was reported as `--resume gone`, a flag
    the command line did not have, and so was okto.train's `resume=` argument."""
    path = project(train=SCHEDULE + (' resume_from_checkpoint: "gone"' if where == "file" else ""))
    if where == "python":
        with pytest.raises(UsageError, match=said):
            okto.train(path, resume="gone")
        return
    assert train(path, *(("--resume", "gone") if where == "flag" else ())) == 2
    assert said in capsys.readouterr().err


def test_a_folder_that_is_no_checkpoint_is_said_before_any_work(project, capsys):
    """--resume on a folder holding no checkpoint prepared the data and built the model first,
    then said it was not one."""
    Path("notes").mkdir()
    assert train(project(train=SCHEDULE), "--resume", "notes") == 2
    out, err = capsys.readouterr()
    assert "notes is not an okto checkpoint" in err
    assert "data " not in out and "model " not in out
