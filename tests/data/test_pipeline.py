"""The whole pipeline: worker processes, statistics, the shape of the rows."""

from __future__ import annotations

import json
import os

from okto.data import DataStats, build_datasets
from tests.data.helpers import chat, config, write_jsonl


def _chats(tmp_path, count: int = 60):
    records = [
        chat(("human", f"hello {i}"), ("gpt", f"answer {i} " * (i % 7 + 1))) for i in range(count)
    ]
    return write_jsonl(tmp_path / "chats.jsonl", records)


def test_worker_processes_make_the_same_rows(tmp_path, tokenizer, monkeypatch):
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    path = str(_chats(tmp_path))
    serial = build_datasets(config(train=path, max_length=32), tokenizer, num_proc=1)
    parallel = build_datasets(config(train=path, max_length=32), tokenizer, num_proc=2)
    for column in ("input_ids", "labels", "attention_mask", "position_ids"):
        assert parallel.train[:][column].tolist() == serial.train[:][column].tolist()
    assert parallel.stats.train == serial.stats.train
    assert "TOKENIZERS_PARALLELISM" not in os.environ  # restored after the workers ran


def test_rows_and_statistics(tmp_path, tokenizer):
    path = str(_chats(tmp_path))
    splits = build_datasets(config(train=path, max_length=64), tokenizer, max_length=24)
    row = splits.train[0]
    assert set(row) == {"input_ids", "labels", "attention_mask", "position_ids"}
    assert all(tuple(v.shape) == (24,) for v in row.values())
    stats = splits.stats
    assert stats.records_read == 60 and stats.train.records == 59 and stats.validation.records == 1
    assert stats.train.examples == len(splits.train)
    assert stats.train.tokens == int(splits.train[:]["attention_mask"].sum())
    assert stats.train.trained_tokens == int((splits.train[:]["labels"] != -100).sum())
    assert (
        stats.files[0].fields == "chat turns in 'conversations'" and stats.files[0].type == "chat"
    )
    assert {"read", "tokenize", "total"} <= set(stats.seconds)
    assert DataStats.from_dict(json.loads(json.dumps(stats.to_dict()))) == stats
