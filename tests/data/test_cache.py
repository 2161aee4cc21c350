"""The tokenized-data cache: a second run with the same inputs reads rows, not files."""

from __future__ import annotations

import pytest

from okto.data import build_datasets, pipeline
from tests.data.helpers import config, write_jsonl


def _records(word: str) -> list[dict]:
    return [{"input": f"{word} {i}", "output": f"answer {i}"} for i in range(20)]


def _cfg(path, **fields):
    return config(train=str(path), max_length=32, **fields)


def test_second_run_hits_the_cache(tmp_path, tokenizer, monkeypatch):
    path = write_jsonl(tmp_path / "data.jsonl", _records("hello"))
    first = build_datasets(_cfg(path), tokenizer, seed=3, cache_dir=tmp_path / "cache")
    assert not first.stats.cache_hit

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("a cache hit must not tokenize")

    monkeypatch.setattr(pipeline, "_rows", no_tokenizing)
    second = build_datasets(_cfg(path), tokenizer, seed=3, cache_dir=tmp_path / "cache")
    assert second.stats.cache_hit and second.stats.cache_key == first.stats.cache_key
    assert second.train[:]["input_ids"].tolist() == first.train[:]["input_ids"].tolist()
    assert second.train[:]["labels"].tolist() == first.train[:]["labels"].tolist()
    assert second.validation[:]["input_ids"].tolist() == first.validation[:]["input_ids"].tolist()
    assert second.stats.train == first.stats.train
    assert second.stats.files == first.stats.files


@pytest.mark.parametrize(
    "change",
    ["content", "seed", "setting", "tokenizer"],
)
def test_any_input_change_misses(tmp_path, tokenizer, change):
    path = write_jsonl(tmp_path / "data.jsonl", _records("hello"))
    cache_dir = tmp_path / "cache"
    first = build_datasets(_cfg(path), tokenizer, cache_dir=cache_dir)
    cfg, seed, used = _cfg(path), 0, tokenizer
    if change == "content":
        write_jsonl(path, _records("world"))
    elif change == "seed":
        seed = 1
    elif change == "setting":
        cfg = _cfg(path, packing=False)
    else:
        used = tokenizer.__class__.from_pretrained(_saved(tokenizer, tmp_path))
        used.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    second = build_datasets(cfg, used, seed=seed, cache_dir=cache_dir)
    assert not second.stats.cache_hit
    assert second.stats.cache_key != first.stats.cache_key


def _saved(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path / "tok")
    return tmp_path / "tok"


def test_touching_a_file_keeps_the_cache(tmp_path, tokenizer):
    one = write_jsonl(tmp_path / "one.jsonl", _records("hello"))
    build_datasets(_cfg(one, validation=str(one)), tokenizer, cache_dir=tmp_path / "cache")
    one.touch()
    again = build_datasets(_cfg(one, validation=str(one)), tokenizer, cache_dir=tmp_path / "cache")
    assert again.stats.cache_hit
