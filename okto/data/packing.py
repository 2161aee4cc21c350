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


def flatten(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(values, lengths) of an Arrow list column."""
    array = column.combine_chunks()
    return array.flatten().to_numpy(), pc.list_value_length(array).to_numpy()


def to_rows(
    ids: np.ndarray,
    labels: np.ndarray,
    lengths: np.ndarray,
    max_length: int,
    pad_id: int,
    packing: bool,
) -> Rows:
    rows = (
        _pack(ids, labels, lengths, max_length, pad_id)
        if packing
        else _pad(ids, labels, lengths, max_length, pad_id)
    )
    keep = (rows.labels != IGNORE).any(axis=1)
    rows.dropped = int((~keep).sum())
    if rows.dropped:
        for name in COLUMNS:  # one column at a time: the unfiltered one is freed before the next
            setattr(rows, name, getattr(rows, name)[keep])
    return rows


def _pack(ids, labels, lengths, max_length: int, pad_id: int) -> Rows:
    """The stream cut into rows. Built in place in int32 (the rows' size plus one
    temporary): a large dataset's tokens are what fills memory here."""
    total = len(ids)
    count = -(-total // max_length)
    size = count * max_length
    positions = np.ones(size, np.int32)
    # Position within the record: a running count that drops back to 0 at each record
    # start; padding counts as one more record, starting where the tokens end.
    starts = np.cumsum(lengths)
    positions[starts[starts < size]] = 1 - lengths[: len(starts[starts < size])]
    positions[:1] = 0
    np.cumsum(positions, out=positions)
    # ... and restarted at every row start.
    np.minimum(positions, np.tile(np.arange(max_length, dtype=np.int32), count), out=positions)
    mask = np.zeros(size, np.int32)
    mask[:total] = 1
    return Rows(
        _filled(ids, size, pad_id).reshape(count, max_length),
        _filled(labels, size, IGNORE).reshape(count, max_length),
        mask.reshape(count, max_length),
        positions.reshape(count, max_length),
    )


def _filled(values: np.ndarray, size: int, value: int) -> np.ndarray:
    out = np.full(size, value, np.int32)
    out[: len(values)] = values
    return out


def _pad(ids, labels, lengths, max_length: int, pad_id: int) -> Rows:
    count = len(lengths)
    kept = np.minimum(lengths, max_length)
    row = np.repeat(np.arange(count), kept)
    column = np.arange(kept.sum()) - np.repeat(np.cumsum(kept) - kept, kept)
    source = np.repeat(np.cumsum(lengths) - lengths, kept) + column
    out_ids = np.full((count, max_length), pad_id, np.int32)
    out_labels = np.full((count, max_length), IGNORE, np.int32)
    mask = np.zeros((count, max_length), np.int32)
    out_ids[row, column] = ids[source]
    out_labels[row, column] = labels[source]
    mask[row, column] = 1
    positions = np.broadcast_to(np.arange(max_length, dtype=np.int32), (count, max_length)).copy()
    return Rows(out_ids, out_labels, mask, positions, truncated=int((lengths > max_length).sum()))
