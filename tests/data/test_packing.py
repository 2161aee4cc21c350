"""Packing to max_length (boundaries, masks carried across rows) and truncate-and-pad."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from okto.data import build_datasets
from okto.data.encode import IGNORE
from okto.data.packing import COLUMNS, Tokens, to_rows
from tests.data.helpers import config, real_text, trained_runs, write_jsonl

PAD = 99


def _records(*lengths: int, first_masked: int = 0, masked: tuple[int, ...] = ()):
    """Records of ids 1..n each (n = length); the first `first_masked` labels of each are -100,
    and those at the stream's positions `masked`.
    Returned as `to_rows` takes them."""
    ids = np.concatenate([np.arange(1, n + 1) for n in lengths]).astype(np.int32)
    labels = ids.copy()
    start = 0
    for n in lengths:
        labels[start : start + min(first_masked, n)] = IGNORE
        start += n
    labels[list(masked)] = IGNORE
    tokens = Tokens()
    tokens.add((ids, labels, np.asarray(lengths)))
    return tokens


def test_packing_concatenates_and_restarts_positions():
    rows = to_rows(_records(3, 5, 2), max_length=4, pad_id=PAD, packing=True)
    assert rows.input_ids.tolist() == [[1, 2, 3, 1], [2, 3, 4, 5], [1, 2, PAD, PAD]]
    assert rows.labels.tolist() == [[1, 2, 3, 1], [2, 3, 4, 5], [1, 2, IGNORE, IGNORE]]
    assert rows.attention_mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]]
    # Positions restart where a record starts and where a row starts.
    assert rows.position_ids.tolist() == [[0, 1, 2, 0], [0, 1, 2, 3], [0, 1, 0, 1]]


def test_packing_carries_masks_and_drops_rows_without_labels():
    tokens = _records(6, 2, masked=(0, 1, 2, 3, 6))  # a 4-token prompt, then a 1-token one
    rows = to_rows(tokens, max_length=3, pad_id=PAD, packing=True)
    # Row 0 holds only masked prompt tokens: dropped.
    assert rows.dropped == 1
    assert rows.input_ids.tolist() == [[4, 5, 6], [1, 2, PAD]]
    assert rows.labels.tolist() == [[IGNORE, 5, 6], [IGNORE, 2, IGNORE]]


def test_a_row_whose_only_label_is_its_first_is_dropped():
    """A packed row can start with the last record's trained EOS and hold only the next one's
    prompt: its first label is no target, so the row has none and its mean loss is NaN."""
    tokens = _records(4, 4, masked=(4, 5, 6, 7))  # a trained record, then an all-prompt one
    rows = to_rows(tokens, max_length=3, pad_id=PAD, packing=True)
    # Rows: [1 2 3] [4 1 2] [3 4 PAD]; row 1's only label (4) is its first: dropped.
    assert rows.dropped == 2
    assert rows.input_ids.tolist() == [[1, 2, 3]]
    assert rows.trained_tokens == 2  # the targets 2 and 3; label 1 is no one's target


def test_without_packing_records_with_nothing_trained_are_dropped():
    rows = to_rows(_records(6, 3, 5, first_masked=3), max_length=4, pad_id=PAD, packing=False)
    # The middle record is all prompt; the others keep one trained token after the cut.
    assert rows.truncated == 2 and rows.dropped == 1
    assert rows.labels.tolist() == [[IGNORE, IGNORE, IGNORE, 4]] * 2


def test_without_packing_one_record_per_row():
    rows = to_rows(_records(2, 6, 4, first_masked=1), max_length=4, pad_id=PAD, packing=False)
    assert rows.input_ids.tolist() == [[1, 2, PAD, PAD], [1, 2, 3, 4], [1, 2, 3, 4]]
    assert rows.labels.tolist() == [
        [IGNORE, 2, IGNORE, IGNORE],
        [IGNORE, 2, 3, 4],
        [IGNORE, 2, 3, 4],
    ]
    assert rows.attention_mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]
    assert rows.position_ids.tolist() == [[0, 1, 2, 3]] * 3
    assert rows.truncated == 1


def test_packed_pipeline_rows_have_eos_between_records(tmp_path, tokenizer):
    records = [{"input": f"hello {i}", "output": f"answer {i}"} for i in range(6)]
    path = write_jsonl(tmp_path / "pairs.jsonl", records)
    cfg = config(train=str(path), validation=str(path), max_length=16, shuffle=False)
    splits = build_datasets(cfg, tokenizer)
    assert splits.train[:]["input_ids"].shape == (len(splits.train), 16)
    text = "".join(real_text(tokenizer, row) for row in splits.train)
    assert text == "".join(
        f"<|user|>\nhello {i}\n<|assistant|>\nanswer {i}<|endoftext|>" for i in range(6)
    )
    trained = [run for row in splits.train for run in trained_runs(tokenizer, row)]
    assert "".join(trained) == "".join(f"answer {i}<|endoftext|>" for i in range(6))
    eos = tokenizer.eos_token_id
    for row in splits.train:
        ids, positions = row["input_ids"].tolist(), row["position_ids"].tolist()
        for k in range(1, 16):
            if row["attention_mask"][k] and ids[k - 1] == eos:
                assert positions[k] == 0  # a new record starts after every EOS
            elif row["attention_mask"][k]:
                assert positions[k] == positions[k - 1] + 1
    assert splits.stats.train.examples == len(splits.train)


def _large(count: int, masked_every: int = 0) -> Tokens:
    """`count` records of 1 to 300 tokens, added in batches of 256 as the pipeline does;
    every `masked_every`-th record (if set) has no trained token."""
    lengths = np.random.default_rng(0).integers(1, 300, count)
    tokens = Tokens()
    for start in range(0, count, 256):
        part = lengths[start : start + 256]
        labels = np.full(part.sum(), 7, np.int32)
        if masked_every:
            record = np.repeat(np.arange(start, start + len(part)), part)
            labels[record % masked_every == 0] = IGNORE
        tokens.add((np.full(part.sum(), 7, np.int32), labels, part))
    return tokens


@pytest.mark.parametrize("packing", [True, False])
def test_rows_need_little_more_memory_than_themselves(packing):
    """A large dataset's tokens fill memory here: the rows' four columns and small
    temporaries (a column-sized one, np.tile's, went with the position restart; without
    packing, index arrays over every token were three columns' worth in int64)."""
    batches = _large(8000)
    tracemalloc.start()
    try:
        rows = to_rows(batches, max_length=64, pad_id=PAD, packing=packing)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    output = sum(getattr(rows, name).nbytes for name in COLUMNS)
    assert peak < 1.1 * output


@pytest.mark.parametrize("packing", [True, False])
def test_rows_without_trained_tokens_are_dropped_in_every_column(packing):
    """Rows are checked a few hundred at a time and the mask is made after the drop: every
    column keeps the same rows, whichever chunk they were in."""
    tokens = _large(4000, masked_every=4)
    total = tokens.count
    rows = to_rows(tokens, max_length=64, pad_id=PAD, packing=packing)
    assert rows.dropped > 0.1 * (len(rows.input_ids) + rows.dropped)
    assert (rows.labels[:, 1:] != IGNORE).any(axis=1).all()
    assert rows.trained_tokens == int((rows.labels[:, 1:] != IGNORE).sum())
    assert all(len(getattr(rows, name)) == len(rows.input_ids) for name in COLUMNS)
    real = rows.attention_mask.astype(bool)
    assert (rows.input_ids[real] == 7).all() and (rows.input_ids[~real] == PAD).all()
    if packing:  # only the rows of masked records went
        assert real.sum() + 64 * rows.dropped >= total


def test_a_cached_split_is_read_back_memory_mapped(tmp_path, tokenizer):
    """A first run kept its rows in memory for the whole run; a second run mapped them."""
    records = [{"input": f"hello {i}", "output": f"answer {i}"} for i in range(20)]
    cfg = config(train=str(write_jsonl(tmp_path / "pairs.jsonl", records)), max_length=16)
    splits = build_datasets(cfg, tokenizer, cache_dir=tmp_path / "cache")
    entry = tmp_path / "cache" / splits.stats.cache_key
    for split in (splits.train, splits.validation):
        assert split.cache_files and all(
            Path(f["filename"]).is_relative_to(entry) for f in split.cache_files
        )
    uncached = build_datasets(cfg, tokenizer)
    assert splits.train[:]["input_ids"].tolist() == uncached.train[:]["input_ids"].tolist()
