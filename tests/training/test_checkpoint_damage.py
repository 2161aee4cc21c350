"""Checkpoints a crash or a hand damaged: `--resume auto` and `--resume PATH` say what is wrong
(exit 2, before the data and the model), never a traceback, never a silent step back to an
earlier checkpoint; and resuming across an epoch boundary, with shuffling and gradient
accumulation, computes the uninterrupted run's steps."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel

from okto.training import checkpoint as ckpt
from okto.training.metrics import read_metrics
from tests.training.conftest import sentences, steps, train

CHECKPOINTS = Path("runs/tiny/checkpoints")


def _tiny_model(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


DAMAGE = {
    "weights cut short": (lambda step: _truncate(step / ckpt.WEIGHTS), "trainable.safetensors"),
    "optimizer state missing": (lambda step: (step / ckpt.STATE).unlink(), "lacks state.pt"),
    "optimizer state cut short": (lambda step: _truncate(step / ckpt.STATE), "state.pt cannot"),
    "empty trainer state": (lambda step: (step / ckpt.TRAINER).write_text(""), "trainer.json"),
    "trainer state of no step": (lambda step: (step / ckpt.TRAINER).write_text("{}"), "no step"),
    "an empty folder": (lambda step: shutil.rmtree(step) or step.mkdir(), "lacks"),
}


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_latest_checkpoint_is_refused_naming_the_last_whole_one(tmp_path, kind):
    """latest_checkpoint skipped an incomplete folder without a word (the run went on from
    an earlier step, and its next save of that step deleted the folder), and took an
    unreadable one, whose loading ended in a traceback (SafetensorError, JSONDecodeError,
    KeyError, the zip reader's RuntimeError)."""
    model, folder = _tiny_model(), tmp_path / "checkpoints"
    whole = ckpt.save_checkpoint(folder, 2, model, {}, {"step": 2})
    damaged = ckpt.save_checkpoint(folder, 4, model, {}, {"step": 4})
    damage, said = DAMAGE[kind]
    damage(damaged)
    with pytest.raises(ckpt.UsageError) as error:
        ckpt.latest_checkpoint(folder)
    message = str(error.value)
    assert f"{damaged} is a damaged checkpoint" in message and said in message
    assert f"--resume {whole} continues from the last whole one" in message
    with pytest.raises(ckpt.UsageError, match=r"is (a damaged|not an okto) checkpoint"):
        ckpt.read_trainer_state(damaged)  # --resume naming it
    shutil.rmtree(whole)
    with pytest.raises(ckpt.UsageError, match="no checkpoint before it is whole"):
        ckpt.latest_checkpoint(folder)


def test_resume_auto_on_a_damaged_checkpoint_says_so_before_any_work(project, capsys):
    path = project(train="max_steps: 4 save_steps: 2")
    assert train(path) == 0
    _truncate(CHECKPOINTS / "step-0000004" / ckpt.WEIGHTS)
    capsys.readouterr()
    assert train(path, "--max-steps", "6", "--resume", "auto") == 2
    out, err = capsys.readouterr()
    assert "step-0000004 is a damaged checkpoint: trainable.safetensors cannot be read" in err
    assert "Traceback" not in err and "data " not in out and "model " not in out
    assert [p.name for p in ckpt.checkpoints_in(CHECKPOINTS)] == ["step-0000002", "step-0000004"]
    resumed = ("--max-steps", "6", "--resume", str(CHECKPOINTS / "step-0000002"))
    assert train(path, *resumed) == 0
    assert [r["step"] for r in steps()] == [1, 2, 3, 4, 5, 6]  # steps 3-4 once: cut back


def test_resume_from_the_run_folder_names_its_checkpoint_folder(project, capsys):
    path = project(train="max_steps: 2 save_steps: 2")
    assert train(path) == 0
    capsys.readouterr()
    assert train(path, "--resume", "runs/tiny") == 2
    assert f"its checkpoints are in {CHECKPOINTS}, which --resume takes" in capsys.readouterr().err


def test_a_kill_while_a_checkpoint_of_the_same_step_is_replaced_keeps_one_whole(
    tmp_path, monkeypatch
):
    """A `SAVE checkpoint` at a step already saved deleted the old folder in place: a kill
    during the deletion left a half-deleted step-* folder, and no whole one of that step."""
    folder = tmp_path / "checkpoints"
    ckpt.save_checkpoint(folder, 3, _tiny_model(0), {}, {"step": 3})
    rmtree = shutil.rmtree

    def killed_midway(path, *args, **kwargs):
        if Path(path).name == "step-0000003" or Path(path).name.endswith("-old"):  # the old one
            (Path(path) / ckpt.WEIGHTS).unlink()  # part of the old folder is gone
            raise KeyboardInterrupt
        rmtree(path, *args, **kwargs)

    monkeypatch.setattr(ckpt.shutil, "rmtree", killed_midway)
    newer = _tiny_model(1)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(folder, 3, newer, {}, {"step": 3})
    monkeypatch.undo()
    assert ckpt.latest_checkpoint(folder) == folder / "step-0000003"
    weights = load_file(str(folder / "step-0000003" / ckpt.WEIGHTS))
    assert weights["transformer.wte.weight"].equal(newer.transformer.wte.weight)
    ckpt.save_checkpoint(folder, 4, newer, {}, {"step": 4})  # the leftover is swept
    assert sorted(p.name for p in folder.iterdir()) == ["step-0000003", "step-0000004"]


def test_resume_across_an_epoch_boundary_with_shuffle_and_accumulation(project):
    """Dropout on, shuffled epochs, two micro-batches a step: stopped where the next step
    starts in one epoch and ends in the next, the resumed run logs the uninterrupted one."""
    records = [{"text": s} for s in sentences(30, seed=5)]
    settings = 'epochs: 4 gradient_accumulation: 2 scheduler: "cosine" save_steps: 50'
    whole = project(train=settings, records=records)
    assert train(whole, "--set", "OUTPUT.dir=whole") == 0
    rows = read_metrics(Path("whole/tiny/metrics.jsonl"), "start")[0]["rows"]
    per_step = 4 * 2  # batch_size x gradient_accumulation
    stop = next(k for k in range(1, 99) if k * per_step % rows > (k + 1) * per_step % rows > 0)
    rule = f"CONTROL {{ IF step == {stop} {{ STOP }} }}"
    stopped = project(train=settings, extra=rule, name="stop.okt")
    assert train(stopped, "--set", "OUTPUT.dir=parts") == 0
    assert [r["step"] for r in steps(Path("parts/tiny"))] == list(range(1, stop + 1))
    assert train(whole, "--set", "OUTPUT.dir=parts", "--resume", "auto") == 0
    fields = ("step", "loss", "lr", "grad_norm", "epoch")
    parts, uninterrupted = (
        [tuple(r[f] for f in fields) for r in steps(Path(run, "tiny"))]
        for run in ("parts", "whole")
    )
    assert parts == uninterrupted and len(parts) > stop + 1
