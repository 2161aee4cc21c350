"""Checkpoints of a job in several processes, through torch.distributed.checkpoint (DCP).

A checkpoint is a folder `step-NNNNNNN/`, as in one process (checkpoint.py),
holding:

- `dcp/`: the trained parameters and the optimizer state, written by DCP, each
  process its own part in parallel (`__R_0.distcp`) and rank 0 the index
  (`.metadata`). The state dicts come from `get_state_dict`, keyed by parameter
  name whatever wraps the model, so a checkpoint loads on any number of
  processes (DCP re-cuts FSDP's shards to the new layout), and in one process;
- `state.pt`: scheduler and gradient-scaler state (rank 0; the same in every
  process), loaded with `torch.load(weights_only=True)`;
- `rng/rank-R.pt`: each process's random generators; restored when the job has
  as many processes as the one that wrote them;
- `trainer.json`: as in one process, plus `world`, the processes that wrote it.

Every process writes into one temporary folder; after a barrier rank 0 renames
it to `step-*`, so a folder of that name is complete, and a write cut short
leaves the previous checkpoint as it was and a temporary folder the next save
sweeps away. The folder must be one the processes share (one machine's disk,
or a shared file system across machines).
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import torch
from torch import nn

from okto.training import checkpoint as ckpt

DCP = "dcp"
RNG = "rng"
_STAGING = ".tmp-{name}-dcp"


def is_distributed(path: Path) -> bool:
    """Whether a checkpoint folder holds DCP state (written by several processes)."""
    return (path / DCP / ".metadata").is_file()


def save_checkpoint(
    folder: Path,
    step: int,
    model: nn.Module,
    optimizer,
    states: dict,
    trainer: dict,
    parallel,
    rng: dict | None = None,
) -> Path:
    """Write the checkpoint for `step` from every process (each calls this); its folder.
    `rng`: this process's random generators' states to record (by default, as they are now)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    final = folder / f"step-{step:07d}"
    staging = folder / _STAGING.format(name=final.name)
    if parallel.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        ckpt.sweep(folder)
        (staging / RNG).mkdir(parents=True)
    parallel.barrier()
    try:
        try:
            dcp.save(_state(model, optimizer), checkpoint_id=str(staging / DCP))
        except CheckpointException as error:  # a full disk: the caller says so, with no traceback
            raise OSError(_first_failure(error, parallel)) from error
        rng_file = staging / RNG / f"rank-{parallel.rank:05d}.pt"
        with ckpt.disk_errors(folder):
            torch.save(rng or ckpt.rng_state(), rng_file)
        ckpt.fsync(rng_file)
        if parallel.is_main:
            with ckpt.disk_errors(folder):
                torch.save(states, staging / ckpt.STATE)
            (staging / ckpt.TRAINER).write_text(json.dumps(trainer, indent=1))
            for name in (ckpt.STATE, ckpt.TRAINER):
                ckpt.fsync(staging / name)
        parallel.barrier()  # every part is on disk
        if parallel.is_main:
            ckpt.replace(staging, final)  # one of this step may be there (SAVE checkpoint)
            ckpt.fsync(folder)
        parallel.barrier()
    finally:
        if parallel.is_main:
            shutil.rmtree(staging, ignore_errors=True)
    return final


def load_checkpoint(path: Path, model: nn.Module, optimizer, parallel) -> tuple[dict, dict, dict]:
    """Load a DCP checkpoint's parameters and optimizer state into `model` and `optimizer`
    (every process calls this; one process may too); (state dicts, trainer state, this
    process's random generators, or {} when the number of processes changed)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import set_state_dict

    state = _state(model, optimizer)
    try:
        with warnings.catch_warnings():  # in one process DCP says it loads in one process
            warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
            dcp.load(state, checkpoint_id=str(path / DCP))
    except (Exception, CheckpointException) as error:  # DCP names the keys that do not fit
        detail = _first_failure(error, parallel) if isinstance(error, CheckpointException) else error
        raise ckpt.misfit(path, detail) from None
    set_state_dict(
        model,
        optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state["optimizer"],
        options=_options(model),
    )
    states = torch.load(path / ckpt.STATE, map_location="cpu", weights_only=True)
    trainer = json.loads((path / ckpt.TRAINER).read_text())
    rng_file = path / RNG / f"rank-{parallel.rank:05d}.pt"
    same_layout = trainer.get("world", 1) == parallel.world and rng_file.is_file()
    rng = torch.load(rng_file, weights_only=True) if same_layout else {}
    return states, trainer, rng


def _first_failure(error, parallel) -> str:
    """The error under DCP's CheckpointException (a BaseException, which wraps each failing
    process's error with its traceback): the first failing process's, with its rank in a
    job of several."""
    rank, (cause, _) = min(error.failures.items(), key=lambda item: item[0])
    return f"rank {rank}: {cause}" if parallel.distributed else str(cause)


def _state(model: nn.Module, optimizer) -> dict:
    """The model's trained parameters and the optimizer state, keyed by parameter name."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer, options=_options(model))
    return {"model": model_state, "optimizer": optimizer_state}


def _options(model: nn.Module):
    """Frozen parameters (a LoRA base) are left out, as one process leaves them out; they
    come from MODEL.base."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    frozen = any(not p.requires_grad for p in model.parameters())
    return StateDictOptions(ignore_frozen_params=True, strict=not frozen)
