"""Training batches in a fixed order, prepared ahead of the step that needs them.

The training rows are read as one endless stream: epoch e is a permutation of
the rows seeded by (seed, e) (the identity without `shuffle`), and a position
counts the examples consumed since the start. A batch is the next
`batch_size` positions, so the order depends only on the seed and the
position: a resumed run continues with exactly the batches an uninterrupted
one would have seen, and a live change of `batch_size` simply takes more or
fewer positions from there. In a job of several processes a step's batch is
the next `batch_size` x processes positions, of which process r takes the r-th
`batch_size` (the same seeded order in every process, a slice each, as
DistributedSampler gives); the position stays a count of the whole job's
examples, so it means the same for any number of processes.

A worker thread gathers the next batches into pinned host memory; on CUDA each
batch is copied to the device one step ahead, on a side stream when
BLAS `streams` allows more than one, so the copy overlaps the running step.
The time the loop blocks waiting for a batch is measured: with the step's
per-step synchronisation, it is the time the GPU sat idle for want of data.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

COLUMNS = ("input_ids", "labels")
# A stream of its own for the data order, apart from the data pipeline's.
ORDER_STREAM = 1000


@dataclass
class Batch:
    input_ids: torch.Tensor
    labels: torch.Tensor

    @property
    def tokens(self) -> int:
        return self.input_ids.numel()


class ExampleStream:
    """The rows of a split in the seeded order of each epoch, as numpy views over Arrow."""

    def __init__(self, dataset, seed: int, shuffle: bool):
        self.columns = {name: _column(dataset, name) for name in COLUMNS}
        self.rows, self.seq_len = self.columns["input_ids"].shape
        self.seed, self.shuffle = seed, shuffle
        self._order: tuple[int, np.ndarray] | None = None

    def epoch_order(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            order = (
                np.random.default_rng([self.seed, ORDER_STREAM, epoch]).permutation(self.rows)
                if self.shuffle
                else np.arange(self.rows)
            )
            self._order = (epoch, order)
        return self._order[1]

    def rows_at(self, start: int, count: int) -> np.ndarray:
        """Row indices of stream positions start .. start + count - 1."""
        parts, position = [], start
        while position < start + count:
            epoch, offset = divmod(position, self.rows)
            take = min(self.rows - offset, start + count - position)
            parts.append(self.epoch_order(epoch)[offset : offset + take])
            position += take
        return np.concatenate(parts)

    def host_batch(self, start: int, count: int, pin: bool) -> Batch:
        index = self.rows_at(start, count)
        tensors = [torch.from_numpy(self.columns[name][index].astype(np.int64)) for name in COLUMNS]
        if pin:
            tensors = [t.pin_memory() for t in tensors]
        return Batch(*tensors)


def _column(dataset, name: str) -> np.ndarray:
    """A fixed-length list column as a (rows, length) array, without copying."""
    if getattr(dataset, "_indices", None) is not None:
        dataset = dataset.flatten_indices()
    column = dataset.data.table.column(name).combine_chunks()
    return column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), -1)


class Batches:
    """The next batches of an `ExampleStream` (process `rank`'s slice of each), on the
    training device, prepared `depth` ahead."""

    def __init__(
        self,
        stream: ExampleStream,
        device: torch.device,
        batch_size: int,
        position: int = 0,
        depth: int = 2,
        copy_streams: int = 1,
        rank: int = 0,
        world: int = 1,
    ):
        self.stream, self.device, self.depth = stream, device, depth
        self.batch_size, self.position = batch_size, position
        self.rank, self.world = rank, world
        self.wait_seconds = 0.0
        self._cuda = device.type == "cuda"
        self._copy_stream = torch.cuda.Stream(device) if self._cuda and copy_streams > 1 else None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="okto-batches")
        self._pending: deque[Future] = deque()
        self._ready: tuple[Batch, torch.cuda.Event | None] | None = None
        self._next_start = position

    def next(self) -> Batch:
        """The batch at the current position; the position moves past it."""
        if self._ready is None:
            self._ready = self._to_device(self._take_host())
        (batch, copied), self._ready = self._ready, None
        if copied is not None:
            main = torch.cuda.current_stream(self.device)
            main.wait_event(copied)
            for tensor in _fields(batch):  # keep the allocator from reusing them too early
                tensor.record_stream(main)
        self.position += batch.input_ids.shape[0] * self.world
        if self._cuda:  # the next copy runs while this batch's step does
            self._ready = self._to_device(self._take_host())
        return batch

    def resize(self, batch_size: int) -> None:
        """Take `batch_size` examples per batch from the current position on."""
        self._drop_prepared()
        self.batch_size = batch_size

    def rewind(self, position: int) -> None:
        """Go back to `position` (batches taken since are taken again)."""
        self.position = position
        self._drop_prepared()

    def close(self) -> None:
        self._drop_prepared()
        self._worker.shutdown(wait=True)

    def _take_host(self) -> Batch:
        while len(self._pending) < self.depth:
            start = self._next_start + self.rank * self.batch_size  # this process's slice
            self._next_start += self.batch_size * self.world
            self._pending.append(
                self._worker.submit(self.stream.host_batch, start, self.batch_size, self._cuda)
            )
        future = self._pending.popleft()
        if not future.done():
            started = time.perf_counter()
            future.result()
            self.wait_seconds += time.perf_counter() - started
        return future.result()

    def _to_device(self, batch: Batch) -> tuple[Batch, torch.cuda.Event | None]:
        """The batch on the device, and the event its copy on the side stream records."""
        if not self._cuda:
            return batch, None
        if self._copy_stream is None:
            return Batch(*(t.to(self.device, non_blocking=True) for t in _fields(batch))), None
        with torch.cuda.stream(self._copy_stream):
            moved = Batch(*(t.to(self.device, non_blocking=True) for t in _fields(batch)))
            copied = torch.cuda.Event()
            copied.record()
        return moved, copied

    def _drop_prepared(self) -> None:
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        self._ready = None
        self._next_start = self.position


def _fields(batch: Batch) -> tuple[torch.Tensor, ...]:
    return tuple(getattr(batch, name) for name in COLUMNS)
