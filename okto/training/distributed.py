"""Training in several processes on torch.distributed: the process group, the
model's wrapping (DDP or FSDP2) and the few collectives the loop needs.

Every process of a job, whether `okto train --gpus N` started it through
torchrun (okto.training.launch) or an outside torchrun did, finds its place in
the environment torchrun sets (RANK, LOCAL_RANK, WORLD_SIZE), joins the process
group (nccl on CUDA, gloo on the CPU) and trains on cuda:LOCAL_RANK. The loop
talks to one `Parallel`; in a single process each of its methods is the
identity, so one process trains exactly as it did before.

- DDP (the default) wraps the model after the planner patched it: a replica per
  process, gradients all-reduced in buckets while the backward runs, and only
  in the backward of the last micro-batch of a step (`no_sync` on the others).
- FSDP2 (`fully_shard`) shards each transformer block, then the root; the
  parameters stay fp32 shards and are gathered in the precision the plan trains
  in (MixedPrecisionPolicy), gradients are reduce-scattered in fp32 after every
  micro-batch, which keeps them sharded (skipping that would hold whole
  gradients, the memory FSDP is there to save).

The planner's kernels are torch custom ops called from patched instance
forwards, so both wrappers run them as they run any other op.

Decisions that steer the loop (stop, skip a NaN step, evaluate, save) are taken
from values every process holds alike: the loss is all-reduced, the gradient
norm is global, and CONTROL conditions on values that differ per process
(tokens/s, GPU memory) read rank 0's.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import TypeVar

import torch
from torch import nn

from okto.errors import EXIT_FAILURE, OktoError, UsageError
from okto.training import optim

T = TypeVar("T")
# Rank 0 prepares the data while the others wait in a collective: give it time.
TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: torchrun's RANK, LOCAL_RANK and WORLD_SIZE."""

    rank: int = 0
    local_rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def ranks_from_environment() -> Ranks:
    """The ranks a launcher set, or one process when there is none."""
    if "WORLD_SIZE" not in os.environ:
        return Ranks()
    missing = [name for name in ("RANK", "LOCAL_RANK") if name not in os.environ]
    if missing:
        raise UsageError(
            f"WORLD_SIZE is set but {' and '.join(missing)} is not: start okto train under "
            "torchrun, or let it start its processes itself (okto train --gpus N)"
        )
    return Ranks(
        int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    )


class PeerFailed(OktoError):
    """Rank 0 failed before the others could start (it printed why); they end with its code."""

    def __init__(self, exit_code: int):
        super().__init__(f"rank 0 failed (exit code {exit_code})")
        self.exit_code = exit_code


class Parallel:
    """The job as the loop sees it: this process's rank, its device, and the collectives."""

    def __init__(
        self, ranks: Ranks | None = None, device: torch.device | None = None, strategy="ddp"
    ):
        ranks = ranks or Ranks()
        self.rank, self.local_rank, self.world = ranks.rank, ranks.local_rank, ranks.world
        self.device = device or torch.device("cpu")
        self.strategy = strategy
        self.sharded = self.world > 1 and strategy == "fsdp"  # parameters are DTensor shards
        self.units = 0  # FSDP: modules sharded as one unit each, the root included
        self._ddp: nn.Module | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def backend(self) -> str:
        return "nccl" if self.device.type == "cuda" else "gloo"

    # ---- the process group ----------------------------------------------------------

    @classmethod
    def start(cls, ranks: Ranks, settings) -> tuple[Parallel, object]:
        """Join the process group; (the job, the settings with this process's device)."""
        if ranks.world == 1:
            return cls(ranks, settings.device, settings.strategy), settings
        import torch.distributed as dist

        device = settings.device
        if device.type == "cuda":
            device = torch.device("cuda", ranks.local_rank)
            torch.cuda.set_device(device)
        parallel = cls(ranks, device, settings.strategy)
        dist.init_process_group(
            parallel.backend,
            timeout=TIMEOUT,
            device_id=device if device.type == "cuda" else None,
        )
        return parallel, replace(settings, device=device)

    def close(self) -> None:
        import torch.distributed as dist

        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()

    def describe(self) -> str:
        """One line for the run's output: processes, strategy, backend."""
        units = f", {self.units} units sharded" if self.sharded else ""
        return f"{self.world} processes, {self.strategy} over {self.backend}{units}"

    # ---- the model --------------------------------------------------------------------

    def wrap(self, model: nn.Module, settings) -> nn.Module:
        """The module the loop calls: DDP around `model`, or `model` itself sharded (FSDP2)."""
        if not self.distributed:
            return model
        if self.sharded:  # fully_shard moves each parameter to the device as it shards it
            self._shard(model, settings)
            return model
        from torch.nn.parallel import DistributedDataParallel

        # Buffers (masks, rotary tables) never change: no copy from rank 0 before each forward.
        # torch 2.13 renamed the switch; 2.11 knows only the old name.
        known = inspect.signature(DistributedDataParallel.__init__).parameters
        buffers = "forward_sync_buffers" if "forward_sync_buffers" in known else "broadcast_buffers"
        self._ddp = DistributedDataParallel(
            model,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            gradient_as_bucket_view=True,
            **{buffers: False},
        )
        return self._ddp

    def _shard(self, model: nn.Module, settings) -> None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(self.device.type, (self.world,))
        compute = settings.autocast_dtype if settings.weights == "fp32" else None
        policy = MixedPrecisionPolicy(
            param_dtype=compute, reduce_dtype=torch.float32 if compute is not None else None
        )
        blocks = transformer_blocks(model)
        for block in blocks:
            fully_shard(block, mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)  # embeddings, final norm, LM head
        self.units = len(blocks) + 1

    def micro_step(self, last: bool):
        """Around a micro-batch's forward and backward: DDP all-reduces only in the last."""
        if self._ddp is not None and not last:
            return self._ddp.no_sync()
        return contextlib.nullcontext()

    def clip_grad_norm(
        self, params: list[nn.Parameter], max_norm: float, optimizer=None
    ) -> torch.Tensor:
        """The global gradient norm, gradients clipped to `max_norm`; sharded ones too.
        Given an optimizer that can, the clipping is left to its next step (`optim.clip_in_step`)."""
        if not self.sharded:
            if optimizer is not None and optim.folds_clipping(optimizer):
                return optim.clip_in_step(optimizer, params, max_norm)
            return torch.nn.utils.clip_grad_norm_(params, max_norm)
        from torch.distributed.tensor import DTensor

        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()  # the shards' partial norms, combined
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
        return norm

    def model_to_save(self, model: nn.Module) -> nn.Module | None:
        """A model `save_pretrained` can write, on rank 0 (None elsewhere). Under FSDP the
        shards are gathered (a collective: every process calls this) into a copy of the
        model's own class on rank 0's CPU."""
        if not self.sharded:
            return model if self.is_main else None
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )
        from torch.distributed.fsdp import FSDPModule

        state = get_model_state_dict(
            model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        if not self.is_main:
            return None
        cls = next(c for c in type(model).__mro__[1:] if not issubclass(c, FSDPModule))
        with torch.device("meta"):
            plain = cls(copy.deepcopy(model.config))
        plain.load_state_dict(state, assign=True)
        plain.tie_weights()
        return plain

    def optimizer_state_to_save(self, model: nn.Module, optimizer) -> dict | None:
        """The optimizer's state dict on rank 0 (None elsewhere); under FSDP gathered whole
        (a collective) and keyed by parameter name."""
        if not self.sharded:
            return optimizer.state_dict() if self.is_main else None
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        state = get_optimizer_state_dict(
            model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        return state if self.is_main else None

    # ---- collectives ----------------------------------------------------------------

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed over the processes, in place."""
        if self.distributed:
            import torch.distributed as dist

            dist.all_reduce(tensor)
        return tensor

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` averaged over the processes (gloo has no AVG: a sum, divided)."""
        return self.sum(tensor) / self.world if self.distributed else tensor

    def largest(self, value: int) -> torch.Tensor:
        """The largest of the processes' `value`s, as a tensor on the device that is not
        read here: the caller reads it with what it already waits for, so the collective
        costs no synchronisation of its own."""
        tensor = torch.full((), value, device=self.device, dtype=torch.float32)
        if self.distributed:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor

    def agree(self, value: T) -> T:
        """Rank 0's `value`, in every process."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            ids = [self.device.index] if self.device.type == "cuda" else None
            dist.barrier(device_ids=ids)

    def main_first(self, work: Callable[[], T]) -> T:
        """`work` on rank 0, then on the others, which find rank 0's results in the caches
        (tokenizer, data, downloads). When it fails on rank 0, the others end too, quietly:
        rank 0 says why."""
        if not self.distributed:
            return work()
        if self.is_main:
            try:
                result = work()
            except BaseException as error:
                self.agree(getattr(error, "exit_code", EXIT_FAILURE))
                raise
            self.agree(None)
            return result
        failed = self.agree(None)
        if failed is not None:
            raise PeerFailed(failed)
        return work()


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated layers of a Hugging Face model: its `_no_split_modules` classes."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    return [module for module in model.modules() if type(module).__name__ in names]


def record_failure(error: BaseException) -> None:
    """Write `error` where torchrun collects a failed process's message
    (TORCHELASTIC_ERROR_FILE), with the time to the microsecond: the process that
    failed first is the job's cause, and the others, which fail as their peer
    vanishes, fail within the same second. Those say so (`okto_peer_lost`): a process
    that died without a word (a crash, os._exit, the OOM killer) leaves no file, and
    its time is only torchrun's, in whole seconds, noted after its peers wrote theirs."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    now = time.time()
    message = error.render() if isinstance(error, OktoError) else f"{type(error).__name__}: {error}"
    extra = {
        "py_callstack": "".join(traceback.format_exception(error)),
        "timestamp": str(int(now)),
        "okto_time": now,
        "okto_peer_lost": isinstance(error, PeerFailed) or peer_lost(error),
    }
    with open(path, "w", encoding="utf-8") as file:
        json.dump({"message": {"message": message, "extraInfo": extra}}, file)


# How a collective says its peer vanished: gloo raises a RuntimeError with one of these.
_PEER_GONE = ("closed by peer", "reset by peer", "remote worker crashing")


def peer_lost(error: BaseException) -> bool:
    """A collective failed because another process is gone (it is the cause, not this one)."""
    import torch.distributed as dist

    text = str(error)
    return isinstance(error, dist.DistError) or any(words in text for words in _PEER_GONE)
