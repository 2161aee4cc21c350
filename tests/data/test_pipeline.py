"""The whole pipeline: worker processes, statistics, the shape of the rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    assert stats.train.trained_tokens == int((splits.train[:]["labels"][:, 1:] != -100).sum())
    assert (
        stats.files[0].fields == "chat turns in 'conversations'" and stats.files[0].type == "chat"
    )
    assert {"read", "tokenize", "total"} <= set(stats.seconds)
    assert DataStats.from_dict(json.loads(json.dumps(stats.to_dict()))) == stats


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc")
def test_tokenizing_holds_little_more_than_the_rows(tmp_path):
    """`datasets.map` kept the tokenized records in one growing Arrow buffer (with its
    slack) beside the rows, and what reading and tokenizing freed stayed with the
    allocators: the peak was 2.8-3.2 times the rows on this data, 2.1 with direct encoding
    (2.5 on the GPU host's Python 3.12, whose allocators keep more)."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.data.peak_memory", str(tmp_path), "2000", "1200"],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[2],
    )
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["rows"] > 30e6  # large enough for the process's own noise not to matter
    assert measured["peak"] < 2.65 * measured["rows"]


# Encodes with the tokenizer's thread pool, then tokenizes in two worker processes.
_POOL_THEN_WORKERS = """
import json, sys
from types import SimpleNamespace
from okto.data import build_datasets, train_tokenizer

path = sys.argv[1]
with open(path, "w") as f:
    f.writelines(json.dumps({"text": f"hello world {i} " * 20}) + "\\n" for i in range(1200))
tokenizer = train_tokenizer([f"hello world {i}" for i in range(300)], 300)
tokenizer.backend_tokenizer.encode_batch(["hello world " * 100] * 64)
splits = build_datasets(SimpleNamespace(train=path, max_length=64), tokenizer, num_proc=2)
print(splits.stats.train.records)
"""


def test_workers_start_safely_after_the_tokenizer_used_its_threads(tmp_path):
    """Workers were forks of this process. With TOKENIZERS_PARALLELISM=true (which okto
    left alone) a fork of a process whose tokenizer had used its thread pool waited forever
    in its first encode, for pool threads a fork does not copy. (The timeout only ends the
    hang.)"""
    result = subprocess.run(
        [sys.executable, "-c", _POOL_THEN_WORKERS, str(tmp_path / "text.jsonl")],
        env={**os.environ, "TOKENIZERS_PARALLELISM": "true"},
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).parents[2],
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == "1188"  # 12 held out for validation


class _DyingEncoder:
    """An encoder whose worker process is killed, as the system does when memory runs out."""

    imports = ()

    def __call__(self, batch):
        os._exit(9)


def test_a_killed_worker_is_a_clear_error(tmp_path):
    """A pool whose worker died waited for its result forever."""
    import pyarrow as pa

    from okto.data.pipeline import _encoded
    from okto.errors import RunError

    records = pa.table({"roles": [["text"]] * 600, "texts": [["hello"]] * 600})
    with pytest.raises(RunError, match="worker process tokenizing the data stopped abruptly"):
        list(_encoded(records, _DyingEncoder(), workers=2))
