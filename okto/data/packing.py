"""Fixed-length rows from tokenized records: packed, or truncated and padded.

Packing concatenates records (each already ends with EOS) and cuts the stream
into rows of `max_length`; labels travel with their tokens, so masks survive
the cut. `position_ids` restart at every record start and at every row start,
which marks the packing boundaries (models that support it can keep attention
within a record) and keeps positions below `max_length`. The last row is
padded. Without packing, each record is cut to `max_length` and padded.
Padding has `attention_mask` 0 and label -100. Rows without a single trained
token are dropped: they would add nothing to the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from okto.data.encode import IGNORE

NO_TRAINED_TOKENS = "no trained tokens within max_length"
COLUMNS = ("input_ids", "labels", "attention_mask", "position_ids")


@dataclass
class Rows:
    """Row-major int32 arrays of shape (rows, max_length), one per column."""

    input_ids: np.ndarray
    labels: np.ndarray
    attention_mask: np.ndarray
    position_ids: np.ndarray
    truncated: int = 0  # records cut at max_length
    dropped: int = 0  # records (no packing) or rows (packing) with nothing to train

    def to_arrow(self) -> pa.Table:
        length = self.input_ids.shape[1]
        return pa.table(
            {
                name: pa.FixedSizeListArray.from_arrays(
                    pa.array(getattr(self, name).reshape(-1), pa.int32()), length
                )
                for name in COLUMNS
            }
        )


# Tokenized records in batches of whole records: (ids, labels, lengths), ids and labels
# each record's tokens end to end (int32), lengths one per record (0 for a dropped one).
Batch = tuple[np.ndarray, np.ndarray, np.ndarray]


def record_batches(table: pa.Table) -> list[Batch]:
    """The `input_ids` and `labels` list columns of `table`, batch by batch, as NumPy views
    of its memory (nothing is copied)."""
    return [
        (
            batch.column("input_ids").flatten().to_numpy(),
            batch.column("labels").flatten().to_numpy(),
            pc.list_value_length(batch.column("input_ids")).to_numpy(zero_copy_only=False),
        )
        for batch in table.to_batches()
    ]


def to_rows(batches: list[Batch], max_length: int, pad_id: int, packing: bool) -> Rows:
    """Rows from tokenized records. `batches` is emptied once the ids and labels are in the
    rows, so the records' memory (a large dataset's tokens, twice) is freed before the
    other columns are made: the peak is the records plus two columns, or the four columns."""
    lengths = np.concatenate([b[2] for b in batches]) if batches else np.zeros(0, np.int64)
    lengths = lengths[lengths > 0]
    rows = (
        _pack(batches, lengths, max_length, pad_id)
        if packing
        else _pad(batches, lengths, max_length, pad_id)
    )
    keep = (rows.labels != IGNORE).any(axis=1)
    rows.dropped = int((~keep).sum())
    if rows.dropped:
        for name in COLUMNS:  # one column at a time: the unfiltered one is freed before the next
            setattr(rows, name, getattr(rows, name)[keep])
    return rows


def _pack(batches: list[Batch], lengths: np.ndarray, max_length: int, pad_id: int) -> Rows:
    """The stream cut into rows, built in place in int32."""
    total = int(lengths.sum())
    count = -(-total // max_length)
    size = count * max_length
    ids = _filled([b[0] for b in batches], size, pad_id)
    labels = _filled([b[1] for b in batches], size, IGNORE)
    _release(batches)
    positions = np.ones(size, np.int32)
    # Position within the record: a running count that drops back to 0 at each record
    # start; padding counts as one more record, starting where the tokens end.
    starts = np.cumsum(lengths)
    inside = starts < size
    positions[starts[inside]] = 1 - lengths[: int(inside.sum())]
    positions[:1] = 0
    np.cumsum(positions, out=positions)
    shape = (count, max_length)
    # ... and restarted at every row start (a column index broadcast over the rows).
    np.minimum(
        positions.reshape(shape),
        np.arange(max_length, dtype=np.int32),
        out=positions.reshape(shape),
    )
    mask = np.zeros(size, np.int32)
    mask[:total] = 1
    return Rows(
        ids.reshape(shape), labels.reshape(shape), mask.reshape(shape), positions.reshape(shape)
    )


def _release(batches: list[Batch]) -> None:
    """Drop the records and hand their memory back to the system: Arrow's allocator keeps
    what is freed for its next allocation, and none comes here."""
    batches.clear()
    pa.default_memory_pool().release_unused()


def _filled(chunks: list[np.ndarray], size: int, value: int) -> np.ndarray:
    """The chunks end to end in a new int32 array of `size`, the rest `value`."""
    out = np.full(size, value, np.int32)
    start = 0
    for chunk in chunks:
        out[start : start + len(chunk)] = chunk
        start += len(chunk)
    return out


def _pad(batches: list[Batch], lengths: np.ndarray, max_length: int, pad_id: int) -> Rows:
    """One row per record, cut to max_length and padded, filled batch by batch."""
    count = len(lengths)
    out_ids = np.full((count, max_length), pad_id, np.int32)
    out_labels = np.full((count, max_length), IGNORE, np.int32)
    mask = np.zeros((count, max_length), np.int32)
    first = 0  # this batch's first row
    while batches:
        ids, labels, batch_lengths = batches.pop(0)
        batch_lengths = batch_lengths[batch_lengths > 0]
        kept = np.minimum(batch_lengths, max_length)
        row = first + np.repeat(np.arange(len(kept)), kept)
        column = np.arange(kept.sum()) - np.repeat(np.cumsum(kept) - kept, kept)
        source = np.repeat(np.cumsum(batch_lengths) - batch_lengths, kept) + column
        out_ids[row, column] = ids[source]
        out_labels[row, column] = labels[source]
        mask[row, column] = 1
        first += len(kept)
    _release(batches)
    positions = np.broadcast_to(np.arange(max_length, dtype=np.int32), (count, max_length)).copy()
    return Rows(out_ids, out_labels, mask, positions, truncated=int((lengths > max_length).sum()))
