"""A cache entry whose entry.json holds statistics okto cannot read is rebuilt, not a crash."""

from __future__ import annotations

import json

import pytest

from okto.data import DataWarning, build_datasets
from okto.data.cache import ENTRY_FILE
from tests.data.helpers import config, write_jsonl


@pytest.mark.parametrize(
    "stats, reason",
    [
        ({"train": {"examples": 0}, "validation": {"examples": 0}}, "lacks 'test'"),
        ("garbled", "string indices"),
    ],
)
def test_unreadable_statistics_in_an_entry_rebuild_it(tmp_path, tokenizer, stats, reason):
    """The statistics were parsed after the entry was taken as sound: a KeyError traceback."""
    path = write_jsonl(tmp_path / "data.jsonl", [{"text": f"hello {i}"} for i in range(20)])
    cfg = config(train=str(path), max_length=32)
    first = build_datasets(cfg, tokenizer, cache_dir=tmp_path / "cache")
    entry = tmp_path / "cache" / first.stats.cache_key / ENTRY_FILE
    recorded = json.loads(entry.read_text())
    entry.write_text(json.dumps({**recorded, "stats": stats}))
    with pytest.warns(DataWarning, match=f"damaged .*{reason}"):
        again = build_datasets(cfg, tokenizer, cache_dir=tmp_path / "cache")
    assert not again.stats.cache_hit
    assert again.stats.train.examples == first.stats.train.examples
    assert build_datasets(cfg, tokenizer, cache_dir=tmp_path / "cache").stats.cache_hit
