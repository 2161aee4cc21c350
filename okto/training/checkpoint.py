"""Checkpoints: everything a run needs to continue exactly where it was.

A checkpoint is a folder `step-NNNNNNN/` under the run's checkpoint folder:

- `trainable.safetensors`: the trained parameters (all of them, or a LoRA
  adapter's: the frozen base is rebuilt from MODEL.base on resume);
- `state.pt`: optimizer, scheduler, gradient scaler and RNG states (torch,
  CUDA, Python, NumPy), plain tensors and numbers only, so it loads with
  `torch.load(weights_only=True)`, which runs no code from the file;
- `trainer.json`: step, data position, live TRAIN values, CONTROL and
  early-stopping state, the logging window.

It is written under a temporary name and renamed, so a folder named
`step-*` is always complete: a write cut short (a crash, a full disk, a
kill) leaves a `.tmp-*` folder that is never read and is swept away by the
next save, and the previous checkpoint untouched. A `step-*` folder damaged
otherwise (a file deleted or cut short by hand, a copy cut short) is refused
by `--resume`, naming what is wrong and the last whole checkpoint. A job of several processes
writes its checkpoints through torch.distributed.checkpoint instead
(distributed_checkpoint.py), in the same folders and under the same rules.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
import re
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from okto.errors import UsageError

WEIGHTS = "trainable.safetensors"
STATE = "state.pt"
TRAINER = "trainer.json"
FILES = (WEIGHTS, STATE, TRAINER)
DISTRIBUTED_FILES = ("dcp/.metadata", STATE, TRAINER)  # distributed_checkpoint.py's
_NAME = re.compile(r"^step-(\d+)$")
_TEMP_PREFIX = ".tmp-"


def save_checkpoint(
    folder: Path, step: int, model: nn.Module, states: dict, trainer: dict, rng: dict | None = None
) -> Path:
    """Write a checkpoint for `step` atomically; `states` holds state dicts (optimizer, ...),
    `rng` the random generators' states to record (by default, as they are now)."""
    folder.mkdir(parents=True, exist_ok=True)
    sweep(folder)
    final = folder / f"step-{step:07d}"
    staging = folder / f"{_TEMP_PREFIX}{final.name}-{os.getpid()}"
    try:
        staging.mkdir()
        with disk_errors(folder):
            save_file(trainable_state(model), str(staging / WEIGHTS), metadata={"step": str(step)})
            torch.save({**states, "rng": rng or rng_state()}, staging / STATE)
        (staging / TRAINER).write_text(json.dumps(trainer, indent=1))
        for name in FILES:
            fsync(staging / name)
        replace(staging, final)
        fsync(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def replace(staging: Path, final: Path) -> None:
    """Rename `staging` to `final`. One already there (`SAVE checkpoint` and a periodic save
    at the same step) is first renamed to a temporary name, then removed: deleted in place,
    a kill during the deletion left a half-deleted `step-*` folder."""
    if final.exists():
        old = final.with_name(f"{_TEMP_PREFIX}{final.name}-{os.getpid()}-old")
        os.rename(final, old)
        os.rename(staging, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staging, final)


@contextlib.contextmanager
def disk_errors(folder: Path):
    """Failures to write files into `folder` as the OSError their callers report: on a full
    disk torch.save raises a RuntimeError from its zip writer and safetensors a
    SafetensorError, which ended runs in a traceback. The message says the space left."""
    try:
        yield
    except (RuntimeError, SafetensorError) as error:
        text = str(error)
        if "inline_container" not in text and "I/O error" not in text:
            raise  # not a write failure
        try:
            free = f"; {shutil.disk_usage(folder).free / 1e6:.0f} MB free there"
        except OSError:
            free = ""
        raise OSError(f"writing failed: {text.strip()}{free}") from error


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train, by name (tied ones once), detached and contiguous."""
    return {
        name: param.detach().contiguous()
        for name, param in model.named_parameters()
        if param.requires_grad
    }


def checkpoints_in(folder: Path) -> list[Path]:
    """The `step-N` folders in `folder` (complete or not), by step."""
    if not folder.is_dir():
        return []
    found = [path for path in folder.iterdir() if path.is_dir() and _NAME.match(path.name)]
    return sorted(found, key=lambda path: int(_NAME.match(path.name).group(1)))


def set_aside(folder: Path, records: tuple[Path | None, ...] = ()) -> tuple[int, Path] | None:
    """Move an earlier run's `step-N` folders into `earlier-<time of its last save>/`, and
    with them `records`, the files of that run a fresh one would start anew (its metrics
    file and log), where they exist.

    A fresh run must not resume from them or mix its steps with theirs, and they
    are the user's: they are moved where `--resume auto` does not look, never deleted.
    Returns how many checkpoints moved and where, or None when there were none.
    """
    found = checkpoints_in(folder)
    if not found:
        return None
    last_save = max(path.stat().st_mtime for path in found)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(last_save))
    target, copy = folder / f"earlier-{stamp}", 1
    while target.exists():
        copy += 1
        target = folder / f"earlier-{stamp}-{copy}"
    target.mkdir()
    for path in found:
        path.rename(target / path.name)
    for path in records:
        if path is not None and path.is_file():
            shutil.move(path, target / path.name)
    return len(found), target


def latest_checkpoint(folder: Path) -> Path | None:
    """The checkpoint with the highest step in `folder`, if any. A `step-*` folder after it
    that is incomplete or unreadable is refused, saying what is wrong and naming the last
    whole one: skipped, the run quietly went back to an earlier step, and its next save of
    that step deleted the damaged folder."""
    damaged = []
    for path in reversed(checkpoints_in(folder)):
        problem = damage(path)
        if problem is None:
            break
        damaged.append((path, problem))
    else:
        path = None
    if damaged:
        newest, problem = damaged[0]
        names = ", ".join(p.name for p, _ in reversed(damaged))
        then = (
            f"--resume {path} continues from the last whole one (or move {names} out of "
            f"{folder}, and --resume auto takes it)"
            if path is not None
            else f"no checkpoint before it is whole: move {names} out of {folder}, or start "
            "afresh without --resume (which sets the checkpoints aside)"
        )
        raise UsageError(f"{newest} is a damaged checkpoint: {problem}; {then}")
    return path


def damage(path: Path) -> str | None:
    """What makes the folder `path` no whole checkpoint (a file missing, cut short or not
    what okto writes), or None. Reads the files' headers only, not the tensors."""
    files = DISTRIBUTED_FILES if (path / DISTRIBUTED_FILES[0]).is_file() else FILES
    missing = [name for name in files if not (path / name).is_file()]
    if missing:
        return f"it lacks {', '.join(missing)}"
    try:
        trainer = json.loads((path / TRAINER).read_text())
    except (ValueError, OSError) as error:
        return f"{TRAINER} cannot be read ({error})"
    if not isinstance(trainer, dict) or not isinstance(trainer.get("step"), int):
        return f"{TRAINER} holds no step"
    for name in (STATE, WEIGHTS) if files is FILES else (STATE,):
        try:
            if name == STATE:  # what torch.save writes: a zip, its index at the end
                zipfile.ZipFile(path / name).close()
            else:  # its header, checked against the file's size
                with safe_open(str(path / name), "pt"):
                    pass
        except (zipfile.BadZipFile, SafetensorError, OSError) as error:
            return f"{name} cannot be read ({error})"
    return None


def read_checkpoint(path: Path) -> tuple[dict, dict, dict]:
    """(trainable tensors, state dicts, trainer state) of a checkpoint folder."""
    trainer = read_trainer_state(path)
    try:
        weights = load_file(str(path / WEIGHTS))
        states = torch.load(path / STATE, map_location="cpu", weights_only=True)
    except (SafetensorError, RuntimeError, pickle.UnpicklingError) as error:  # a bit flipped
        raise UsageError(f"{path} is a damaged checkpoint: {error}") from None
    return weights, states, trainer


def read_trainer_state(path: Path) -> dict:
    """A checkpoint's trainer.json (of one process or of several), or an error saying that
    `path` is a damaged checkpoint, or none (naming a folder in it that holds some)."""
    looks_like_one = any((path / name).exists() for name in (*FILES, DISTRIBUTED_FILES[0]))
    problem = damage(path) if path.is_dir() else None
    if path.is_dir() and problem is None:
        return json.loads((path / TRAINER).read_text())
    if looks_like_one:
        raise UsageError(f"{path} is a damaged checkpoint: {problem}")
    holding = (
        [sub for sub in sorted(path.iterdir()) if checkpoints_in(sub)] if path.is_dir() else []
    )
    where = f"; its checkpoints are in {holding[0]}, which --resume takes" if holding else ""
    raise UsageError(
        f"{path} is not an okto checkpoint (a step-* folder with {', '.join(FILES)}){where}"
    )


def load_trainable(model: nn.Module, weights: dict[str, torch.Tensor], where: Path) -> None:
    expected = trainable_state(model)
    if set(weights) != set(expected):
        missing = sorted(set(expected) - set(weights))[:3]
        extra = sorted(set(weights) - set(expected))[:3]
        raise misfit(where, f"missing {missing}, unexpected {extra}")
    for name, tensor in weights.items():  # a LoRA rank, or a MODEL.config size, changed
        if tensor.shape != expected[name].shape:
            shapes = f"{list(tensor.shape)} in the checkpoint, {list(expected[name].shape)} here"
            raise misfit(where, f"{name} is {shapes}")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in weights:
                param.copy_(weights[name])


def misfit(where: Path, detail) -> UsageError:
    """The error for a checkpoint whose tensors are not this model's."""
    return UsageError(
        f"{where} does not fit this model ({detail}): "
        "was it written by a run with another MODEL block?"
    )


def rng_state() -> dict:
    """Every random generator a step touches, as tensors and plain numbers."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(value):
    """random.setstate wants tuples where the checkpoint may hold lists."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def sweep(folder: Path) -> None:
    """Remove what interrupted saves left behind."""
    for path in folder.glob(f"{_TEMP_PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True)


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
