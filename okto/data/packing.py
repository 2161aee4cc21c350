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
    trained_tokens: int = 0  # targets: labelled tokens past their row's first

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


# A batch of tokenized records, as `encode.Encoder` makes them: (ids, labels, lengths), ids
# and labels the records' tokens end to end (int32), lengths one per record (0 for a dropped
# one).
Batch = tuple[np.ndarray, np.ndarray, np.ndarray]
# Rows made or checked at a time: index arrays or masks over every token would be columns'
# worth of temporary memory.
_ROWS_AT_ONCE = 256


class Tokens:
    """A split's tokenized records end to end, batch after batch: ids and labels each in one
    buffer that grows in place (a `bytearray`: a large one grows by remapping its pages,
    not copying them), so the tokens are held once and, packed, become the rows' columns
    without a copy."""

    def __init__(self) -> None:
        self._ids, self._labels = bytearray(), bytearray()
        self._lengths: list[np.ndarray] = []
        self.count = 0  # tokens held

    def add(self, batch: Batch) -> None:
        ids, labels, lengths = batch
        self._ids += memoryview(np.ascontiguousarray(ids, np.int32)).cast("B")
        self._labels += memoryview(np.ascontiguousarray(labels, np.int32)).cast("B")
        self._lengths.append(lengths[lengths > 0])
        self.count += len(ids)

    def lengths(self) -> np.ndarray:
        """Each kept record's token count, in order."""
        return np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int64)

    def take(self, size: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
        """The ids and labels padded to `size` tokens, as arrays over the buffers, which
        this object then gives up (they are the arrays' now)."""
        pad = size - self.count
        self._ids += np.full(pad, pad_id, np.int32).tobytes()
        self._labels += np.full(pad, IGNORE, np.int32).tobytes()
        ids = np.frombuffer(self._ids, np.int32)
        labels = np.frombuffer(self._labels, np.int32)
        self._ids, self._labels, self.count = bytearray(), bytearray(), 0
        return ids, labels


def to_rows(tokens: Tokens, max_length: int, pad_id: int, packing: bool) -> Rows:
    """Rows from tokenized records, `tokens` emptied. The peak is the rows themselves: packed,
    the records' buffers become the ids and labels; rows without trained tokens are dropped
    from one column at a time, and the attention mask is made for the rows kept."""
    lengths = tokens.lengths()
    positions = None
    if packing:
        ids, labels, positions, real = _pack(tokens, lengths, max_length, pad_id)
    else:
        ids, labels, real = _pad(tokens, lengths, max_length, pad_id)
    keep, trained = _trained(labels)
    dropped = int((~keep).sum())
    if dropped:  # each filtered copy replaces its column before the next is made
        real = real[keep]
        positions = None if positions is None else positions[keep]
        ids = ids[keep]
        labels = labels[keep]
    if positions is None:
        positions = np.broadcast_to(np.arange(max_length, dtype=np.int32), ids.shape).copy()
    mask = np.zeros(ids.shape, np.int32)
    np.less(np.arange(max_length), real[:, None], out=mask, casting="unsafe")
    truncated = 0 if packing else int((lengths > max_length).sum())
    return Rows(ids, labels, mask, positions, truncated, dropped, trained)


def _trained(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Which rows have a trained token, and how many tokens are trained, `_ROWS_AT_ONCE`
    rows at a time (a mask of the whole column would be a quarter column more). A row's
    first label is never a target (the model predicts token t + 1 from token t), so a row
    whose only label is there has nothing to train: its mean loss would be 0 / 0."""
    keep = np.empty(len(labels), bool)
    trained = 0
    for first in range(0, len(labels), _ROWS_AT_ONCE):
        part = labels[first : first + _ROWS_AT_ONCE, 1:] != IGNORE
        keep[first : first + len(part)] = part.any(axis=1)
        trained += int(np.count_nonzero(part))
    return keep, trained


def _pack(tokens: Tokens, lengths: np.ndarray, max_length: int, pad_id: int):
    """The stream cut into rows: ids, labels and positions (rows, max_length), and each
    row's count of real tokens."""
    total = tokens.count
    count = -(-total // max_length)
    size = count * max_length
    ids, labels = tokens.take(size, pad_id)
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
    real = np.full(count, max_length, np.int64)
    real[-1:] = total - (count - 1) * max_length
    return ids.reshape(shape), labels.reshape(shape), positions.reshape(shape), real


def _pad(tokens: Tokens, lengths: np.ndarray, max_length: int, pad_id: int):
    """One row per record, cut to max_length and padded, `_ROWS_AT_ONCE` at a time:
    ids and labels (records, max_length), and each row's count of real tokens."""
    count = len(lengths)
    ids, labels = tokens.take(tokens.count, pad_id)
    out_ids = np.full((count, max_length), pad_id, np.int32)
    out_labels = np.full((count, max_length), IGNORE, np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    real = np.minimum(lengths, max_length)
    for first in range(0, count, _ROWS_AT_ONCE):
        kept = real[first : first + _ROWS_AT_ONCE]
        row = first + np.repeat(np.arange(len(kept)), kept)
        column = np.arange(kept.sum()) - np.repeat(np.cumsum(kept) - kept, kept)
        source = np.repeat(offsets[first : first + len(kept)], kept) + column
        out_ids[row, column] = ids[source]
        out_labels[row, column] = labels[source]
    return out_ids, out_labels, real
