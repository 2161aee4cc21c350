"""The tokenized-data cache: a second run with the same inputs reads rows, not files."""

from __future__ import annotations

import copy
import os
import shutil
import time
import warnings

import pytest

from okto.data import DataError, DataWarning, build_datasets, cache, files, pipeline
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
    ["content", "seed", "setting", "tokenizer", "bos_token", "code"],
)
def test_any_input_change_misses(tmp_path, tokenizer, monkeypatch, change):
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
    elif change == "tokenizer":
        used = tokenizer.__class__.from_pretrained(_saved(tokenizer, tmp_path))
        used.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    elif change == "bos_token":  # templates may write it
        used = copy.deepcopy(tokenizer)
        used.bos_token = "<|user|>"
    else:  # okto's row-making code, or a library that tokenizes, changed
        monkeypatch.setattr(cache, "code_version", lambda: "another version")
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


def test_a_rewrite_that_keeps_size_and_mtime_misses(tmp_path, tokenizer):
    """Same size, same inode, mtime put back (rsync -t, cp -p): the content decides."""
    path = write_jsonl(tmp_path / "data.jsonl", _records("hello"))
    first = build_datasets(_cfg(path), tokenizer, cache_dir=tmp_path / "cache")
    before = path.stat()
    write_jsonl(path, _records("world"))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size
    second = build_datasets(_cfg(path), tokenizer, cache_dir=tmp_path / "cache")
    assert not second.stats.cache_hit
    assert second.stats.cache_key != first.stats.cache_key


def test_a_file_changed_just_now_is_hashed_again(tmp_path, monkeypatch):
    """A coarse filesystem clock gives a quick second write the same times: not remembered."""
    monkeypatch.setattr(files, "_hashes", {})
    path = write_jsonl(tmp_path / "data.jsonl", _records("hello"))
    files.content_hash(path)
    assert files._hashes == {}


DAMAGE = {
    "entry file gone": lambda entry: (entry / cache.ENTRY_FILE).unlink(),
    "entry file not JSON": lambda entry: (entry / cache.ENTRY_FILE).write_text("{"),
    "rows cut short": lambda entry: _cut(next((entry / "train").glob("*.arrow"))),
    "a split gone": lambda entry: shutil.rmtree(entry / "validation"),
}


def _cut(path):
    path.write_bytes(path.read_bytes()[:100])


def test_a_damaged_split_file_is_named(tmp_path, tokenizer):
    """A split's state.json garbled in place (same size) was reported as 'entry.json is not
    valid JSON', sending the user to a file that was sound."""
    path = write_jsonl(tmp_path / "data.jsonl", _records("hello"))
    cache_dir = tmp_path / "cache"
    first = build_datasets(_cfg(path), tokenizer, cache_dir=cache_dir)
    state = cache_dir / first.stats.cache_key / "train" / "state.json"
    state.write_text("x" * state.stat().st_size)
    with pytest.warns(DataWarning, match=r"damaged \(train/state.json is not valid JSON\)"):
        again = build_datasets(_cfg(path), tokenizer, cache_dir=cache_dir)
    assert not again.stats.cache_hit


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_entry_is_rebuilt_with_a_warning(tmp_path, tokenizer, damage):
    path = write_jsonl(tmp_path / "data.jsonl", _records("hello"))
    cache_dir = tmp_path / "cache"
    first = build_datasets(_cfg(path), tokenizer, cache_dir=cache_dir)
    # Read before the damage: the rows are memory-mapped from the entry's files.
    rows, validation_rows = first.train[:]["input_ids"].tolist(), first.validation.num_rows
    DAMAGE[damage](cache_dir / first.stats.cache_key)
    with pytest.warns(DataWarning, match="cached data at .* was damaged"):
        again = build_datasets(_cfg(path), tokenizer, cache_dir=cache_dir)
    assert not again.stats.cache_hit
    assert again.validation is not None
    assert again.train[:]["input_ids"].tolist() == rows
    third = build_datasets(_cfg(path), tokenizer, cache_dir=cache_dir)
    assert third.stats.cache_hit and third.validation.num_rows == validation_rows


def test_the_entry_path_and_size_are_reported(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "data.jsonl", _records("hello"))
    first = build_datasets(_cfg(path), tokenizer, cache_dir=tmp_path / "cache")
    entry = tmp_path / "cache" / first.stats.cache_key
    assert first.stats.cache_path == str(entry)
    on_disk = sum(
        f.stat().st_size for f in entry.rglob("*") if f.is_file() and f.name != cache.ENTRY_FILE
    )
    assert first.stats.cache_bytes == on_disk > 0
    second = build_datasets(_cfg(path), tokenizer, cache_dir=tmp_path / "cache")
    assert (second.stats.cache_path, second.stats.cache_bytes) == (str(entry), on_disk)


def test_an_unwritable_cache_warns_and_the_run_goes_on(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "data.jsonl", _records("hello"))
    (tmp_path / "not-a-folder").write_text("")
    with pytest.warns(DataWarning, match="could not write the data cache"):
        splits = build_datasets(_cfg(path), tokenizer, cache_dir=tmp_path / "not-a-folder" / "c")
    assert splits.train.num_rows and splits.stats.cache_path == ""


def test_an_interrupted_writes_leftovers_are_removed(tmp_path, tokenizer):
    cache_dir = tmp_path / "cache"
    old, recent = cache_dir / ".abc-killed", cache_dir / ".abc-writing"
    for leftover in (old, recent):
        (leftover / "train").mkdir(parents=True)
    hours_ago = time.time() - 2 * cache.STALE_SECONDS
    os.utime(old, (hours_ago, hours_ago))
    path = write_jsonl(tmp_path / "data.jsonl", _records("hello"))
    build_datasets(_cfg(path), tokenizer, cache_dir=cache_dir)
    assert not old.exists() and recent.exists()


def _entry(cache_dir, splits):
    return cache_dir / splits.stats.cache_key


def test_the_least_recently_used_entries_go_past_the_cap(tmp_path, tokenizer, monkeypatch):
    """Entries were never evicted: every change of data, tokenizer or settings added one."""
    cache_dir = tmp_path / "cache"
    built = {
        word: build_datasets(
            _cfg(write_jsonl(tmp_path / f"{word}.jsonl", _records(word))),
            tokenizer,
            cache_dir=cache_dir,
        )
        for word in ("one", "two", "three")
    }
    for age, word in ((300, "one"), (200, "two"), (100, "three")):
        used = time.time() - age
        os.utime(_entry(cache_dir, built[word]) / cache.ENTRY_FILE, (used, used))
    sizes = {word: splits.stats.cache_bytes for word, splits in built.items()}
    again = build_datasets(_cfg(tmp_path / "one.jsonl"), tokenizer, cache_dir=cache_dir)
    assert again.stats.cache_hit  # "one" is now the most recently used
    monkeypatch.setenv(cache.SIZE_VARIABLE, f"{(sizes['one'] + sizes['three']) / 1e3:.3f}KB")
    with pytest.warns(DataWarning, match=r"removed the 1 least recently used entry \(") as said:
        build_datasets(_cfg(tmp_path / "three.jsonl"), tokenizer, cache_dir=cache_dir)
    assert cache.SIZE_VARIABLE in str(said[0].message)
    remaining = {p.name for p in cache_dir.iterdir()}
    assert remaining == {again.stats.cache_key, built["three"].stats.cache_key}
    # A run still reading the removed entry keeps its rows (memory-mapped, open files).
    assert built["two"].train[:]["input_ids"].shape[0] == built["two"].stats.train.examples


def test_the_entry_in_use_stays_even_over_the_cap(tmp_path, tokenizer, monkeypatch):
    cache_dir = tmp_path / "cache"
    one = write_jsonl(tmp_path / "one.jsonl", _records("one"))
    two = write_jsonl(tmp_path / "two.jsonl", _records("two"))
    build_datasets(_cfg(one), tokenizer, cache_dir=cache_dir)
    monkeypatch.setenv(cache.SIZE_VARIABLE, "1KB")
    with pytest.warns(DataWarning, match="removed the 1 least recently used entry"):
        used = build_datasets(_cfg(two), tokenizer, cache_dir=cache_dir)
    assert [p.name for p in cache_dir.iterdir()] == [used.stats.cache_key]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing more to remove, and nothing replayed
        hit = build_datasets(_cfg(two), tokenizer, cache_dir=cache_dir)
    assert hit.stats.cache_hit and hit.stats.warnings == []


@pytest.mark.parametrize("value", ["lots", "12", "-1GB", "5min"])
def test_a_cap_that_is_not_a_size_is_refused(monkeypatch, value):
    monkeypatch.setenv(cache.SIZE_VARIABLE, value)
    with pytest.raises(DataError, match=f"{cache.SIZE_VARIABLE}=.* is not a size"):
        cache.size_limit()


def test_unlimited_keeps_every_entry(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setenv(cache.SIZE_VARIABLE, "Unlimited")
    assert cache.size_limit() is None
    for word in ("one", "two"):
        path = write_jsonl(tmp_path / f"{word}.jsonl", _records(word))
        build_datasets(_cfg(path), tokenizer, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").iterdir())) == 2
