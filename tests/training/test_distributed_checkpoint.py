"""DCP checkpoints written and read in this process (DCP runs without a process group):
what a failed write or a checkpoint of another model says. DCP raises its
CheckpointException, a BaseException, which no `except Exception` or `except OSError`
catches: a traceback, unless distributed_checkpoint turns it into okto's errors."""

from __future__ import annotations

import errno

import pytest
import torch
from torch import nn
from torch.distributed.checkpoint import filesystem

from okto.errors import UsageError
from okto.training import checkpoint as ckpt
from okto.training.distributed import Parallel
from okto.training.distributed_checkpoint import load_checkpoint, save_checkpoint


def model_and_optimizer(width: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    model = nn.Linear(width, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, width)).sum().backward()
    optimizer.step()
    return model, optimizer


def save(folder, step: int, model, optimizer):
    trainer = {"step": step, "world": 1}
    return save_checkpoint(folder, step, model, optimizer, {}, trainer, Parallel())


def test_a_full_disk_is_an_os_error_and_the_earlier_checkpoint_stays(tmp_path, monkeypatch):
    """The loop turns an OSError into the message naming the checkpoint to resume from."""
    model, optimizer = model_and_optimizer(4)
    earlier = save(tmp_path, 1, model, optimizer)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(filesystem, "_write_item", full)
    with pytest.raises(OSError, match="No space left on device"):
        save(tmp_path, 2, model, optimizer)
    assert sorted(p.name for p in tmp_path.iterdir()) == [earlier.name]
    assert ckpt.latest_checkpoint(tmp_path) == earlier


def test_a_checkpoint_of_another_model_is_refused_with_what_does_not_fit(tmp_path):
    path = save(tmp_path, 1, *model_and_optimizer(4))
    with pytest.raises(UsageError, match=r"does not fit this model \(Size mismatch .*weight"):
        load_checkpoint(path, *model_and_optimizer(3), Parallel())
