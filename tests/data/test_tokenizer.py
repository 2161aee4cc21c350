"""Tokenizers: trained on the data and saved with the run, from a path, from the model."""

from __future__ import annotations

import json
import os
import stat

import pytest
from transformers import AutoTokenizer

from okto.data import DataError, build_datasets, resolve_tokenizer
from okto.data import tokenizer as tokenizer_module
from okto.data.templates import PLAIN_CHAT_TEMPLATE, ROLE_TAGS
from tests.data.helpers import chat, config, trained_runs, write_jsonl


def _chats(tmp_path, count: int = 40):
    records = [
        chat(("human", f"what is {i} plus {i}?"), ("gpt", f"{i} plus {i} is {2 * i}."))
        for i in range(count)
    ]
    return write_jsonl(tmp_path / "chats.jsonl", records)


def test_trained_tokenizer_round_trips_through_the_run(tmp_path):
    cfg = config(train=str(_chats(tmp_path)), tokenizer="train", vocab_size=320)
    tokenizer = resolve_tokenizer(cfg, run_dir=tmp_path / "run")
    saved = tmp_path / "run" / "tokenizer"
    loaded = AutoTokenizer.from_pretrained(saved)
    assert len(tokenizer) == len(loaded) <= 320  # a tiny corpus runs out of merges
    assert loaded.eos_token == "<|endoftext|>" and loaded.pad_token == "<|pad|>"
    assert loaded.bos_token == "<|startoftext|>"
    assert loaded.chat_template == PLAIN_CHAT_TEMPLATE
    for tag in ROLE_TAGS:
        assert len(loaded.encode(tag, add_special_tokens=False)) == 1
    text = "<|user|>\nwhat is 7 plus 7?\n<|assistant|>\n7 plus 7 is 14. Ünïcode ✓<|endoftext|>"
    ids = loaded.encode(text, add_special_tokens=False)
    assert ids == tokenizer.encode(text, add_special_tokens=False)
    assert loaded.decode(ids) == text
    meta = json.loads((saved / tokenizer_module.META_FILE).read_text())
    assert meta["vocab_size"] == len(loaded) and meta["sample_records"] == meta["records"] == 40


def test_the_saved_tokenizer_folder_is_as_readable_as_the_umask_allows(tmp_path):
    """It was made by mkdtemp and renamed, so it stayed private (0700) beside a final/ that
    others sharing the run folder could read."""
    mask = os.umask(0o022)
    try:
        cfg = config(train=str(_chats(tmp_path)), tokenizer="train", vocab_size=320)
        resolve_tokenizer(cfg, run_dir=tmp_path / "run")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "run" / "tokenizer").stat().st_mode) == 0o755


def test_a_second_run_reuses_the_saved_tokenizer(tmp_path, monkeypatch):
    cfg = config(train=str(_chats(tmp_path)), tokenizer="train", vocab_size=320)
    first = resolve_tokenizer(cfg, run_dir=tmp_path / "run")

    def no_training(*args, **kwargs):
        raise AssertionError("the saved tokenizer should be reused")

    monkeypatch.setattr(tokenizer_module, "train_tokenizer", no_training)
    second = resolve_tokenizer(cfg, run_dir=tmp_path / "run")
    assert second.get_vocab() == first.get_vocab()
    other = config(train=str(_chats(tmp_path)), tokenizer="train", vocab_size=330)
    with pytest.raises(AssertionError, match="reused"):
        resolve_tokenizer(other, run_dir=tmp_path / "run")


def test_a_tokenizer_saved_over_a_trained_one_is_not_taken_for_it(tmp_path, tokenizer):
    """The trained tokenizer's record of its data outlived a tokenizer saved over it (the
    run switched to a path), so switching back loaded the path's tokenizer as the trained."""
    trained_cfg = config(train=str(_chats(tmp_path)), tokenizer="train", vocab_size=320)
    run = tmp_path / "run"
    trained = resolve_tokenizer(trained_cfg, run_dir=run)
    tokenizer.save_pretrained(tmp_path / "other")
    resolve_tokenizer(config(train="x", tokenizer=str(tmp_path / "other")), run_dir=run)
    assert not (run / "tokenizer" / tokenizer_module.META_FILE).exists()
    assert resolve_tokenizer(trained_cfg, run_dir=run).get_vocab() == trained.get_vocab()
    assert [p.name for p in run.iterdir()] == ["tokenizer"]  # no temporary folder left


def test_training_sample_is_capped(tmp_path, monkeypatch):
    monkeypatch.setattr(tokenizer_module, "SAMPLE_CHARS", 200)
    cfg = config(train=str(_chats(tmp_path)), tokenizer="train", vocab_size=300)
    with pytest.warns(UserWarning, match=r"trained the tokenizer on \d+ of 40 records"):
        resolve_tokenizer(cfg, run_dir=tmp_path / "run")
    meta = json.loads((tmp_path / "run" / "tokenizer" / tokenizer_module.META_FILE).read_text())
    assert 200 <= meta["sample_chars"] < 400 and meta["sample_records"] < 40


def test_trained_tokenizer_masks_chat(tmp_path):
    path = _chats(tmp_path, 4)
    cfg = config(
        train=str(path),
        validation=str(path),
        tokenizer="train",
        vocab_size=300,
        packing=False,
        shuffle=False,
    )
    tokenizer = resolve_tokenizer(cfg)
    row = build_datasets(cfg, tokenizer).train[0]
    assert trained_runs(tokenizer, row) == ["0 plus 0 is 0.<|endoftext|>"]


def test_from_a_path_and_from_the_model(tmp_path, tokenizer):
    tokenizer.save_pretrained(tmp_path / "tok")
    by_path = resolve_tokenizer(config(train="x", tokenizer="tok"), base_dir=tmp_path)
    by_model = resolve_tokenizer(
        config(train="x"), model_path=tmp_path / "tok", run_dir=tmp_path / "r"
    )
    assert by_path.get_vocab() == by_model.get_vocab() == tokenizer.get_vocab()
    assert (tmp_path / "r" / "tokenizer" / "tokenizer.json").is_file()
    bare = resolve_tokenizer(config(train="x", tokenizer=str(tmp_path / "tok" / "tokenizer.json")))
    assert bare.get_vocab() == tokenizer.get_vocab()
    (tmp_path / "run").mkdir()
    tokenizer.save_pretrained(tmp_path / "run" / "final")  # a run folder, as MODEL.base takes
    by_run = resolve_tokenizer(config(train="x", tokenizer="run"), base_dir=tmp_path)
    assert by_run.get_vocab() == tokenizer.get_vocab()


def test_a_bare_tokenizer_json_finds_its_eos(tmp_path, tokenizer):
    alone = tmp_path / "alone"
    alone.mkdir()
    tokenizer.backend_tokenizer.save(str(alone / "tokenizer.json"))
    bare = resolve_tokenizer(config(train="x", tokenizer=str(alone / "tokenizer.json")))
    assert bare.eos_token == "<|endoftext|>"


def test_tokenizer_errors(tmp_path):
    with pytest.raises(DataError, match='set DATASET tokenizer: "train"'):
        resolve_tokenizer(config(train="x"))
    with pytest.raises(DataError, match="does not exist"):
        resolve_tokenizer(config(train="x", tokenizer="nowhere"), base_dir=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty is not a tokenizer okto can load"):
        resolve_tokenizer(config(train="x", tokenizer="empty"), base_dir=tmp_path)
    # files that are not tokenizers raised tokenizers' bare Exception or a KeyError
    (tmp_path / "data.jsonl").write_text('{"text": "a"}\n')
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "tokenizer.json").write_text('{"a": 1}')
    for name in ("data.jsonl", "other"):
        with pytest.raises(DataError, match=f"{name} is not a tokenizer okto can load"):
            resolve_tokenizer(config(train="x", tokenizer=name), base_dir=tmp_path)
    with pytest.raises(DataError, match="cannot load the tokenizer of model"):
        resolve_tokenizer(config(train="x"), model_path=tmp_path / "empty")


def test_a_first_run_reads_the_training_files_once(tmp_path, monkeypatch):
    """The trained tokenizer's records serve the rows too, warnings and statistics included."""
    from okto.data import DataWarning, selection

    lines = [json.dumps({"text": f"record {i} says hello"}) for i in range(40)]
    lines[7] = '{"text": "cut'
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    reads = []
    real = selection.read_files
    monkeypatch.setattr(
        selection, "read_files", lambda files, *a: reads.append(files) or real(files, *a)
    )
    cfg = config(train=str(path), tokenizer="train", vocab_size=300, packing=False)
    tokenizer = resolve_tokenizer(cfg, run_dir=tmp_path / "run")
    with pytest.warns(DataWarning, match="skipped 1 of 40 lines"):
        splits = build_datasets(cfg, tokenizer, cache_dir=None)
    assert reads == [[path]]
    assert splits.stats.files[0].broken_lines == 1
    assert any("skipped 1 of 40 lines" in note for note in splits.stats.warnings)
    assert len(splits.train) + len(splits.validation) == 39
    build_datasets(cfg, tokenizer, cache_dir=None)  # held once: a later build reads afresh
    assert reads == [[path], [path]]


def test_a_cache_hit_releases_the_records_held_for_it(tmp_path):
    """A new run folder trains (and holds the records) while the rows come from the cache."""
    from okto.data import selection

    path = tmp_path / "data.jsonl"
    path.write_text(
        "".join(json.dumps({"text": f"record {i} says hello"}) + "\n" for i in range(40))
    )
    cfg = config(train=str(path), tokenizer="train", vocab_size=300)
    for run in ("one", "two"):
        tokenizer = resolve_tokenizer(cfg, run_dir=tmp_path / run)
        assert selection._kept
        splits = build_datasets(cfg, tokenizer, cache_dir=tmp_path / "cache")
        assert not selection._kept
    assert splits.stats.cache_hit


def test_data_preparation_names_its_stages_to_a_listener(tmp_path):
    """The stages a trainer's spinner shows: reading, training the tokenizer, tokenizing each
    split, writing the cache; nothing needs a listener."""
    from okto.data.progress import reporting_stages

    path = write_jsonl(
        tmp_path / "d.jsonl", [{"text": f"record number {i} " * 4} for i in range(40)]
    )
    cfg = config(train=str(path), tokenizer="train", vocab_size=300)
    stages: list[str] = []
    with reporting_stages(stages.append):
        tokenizer = resolve_tokenizer(cfg, run_dir=tmp_path / "run", base_dir=tmp_path)
        build_datasets(cfg, tokenizer, cache_dir=tmp_path / "cache", base_dir=tmp_path)
    assert stages[0] == "reading the training data"
    assert stages[1].startswith("training the tokenizer (300 entries) on ")
    splits = build_datasets(cfg, tokenizer, base_dir=tmp_path)  # no listener: stages go nowhere
    held_out = splits.stats.validation.records
    assert stages[2:] == [
        "reading the data files",
        f"tokenizing {40 - held_out} train records",
        f"tokenizing {held_out} validation records",
        "writing the rows to the cache",
    ]


def test_a_tokenizer_smaller_than_vocab_size_is_said(tmp_path):
    """One short record and the default 8,192 entries: it trained 264 in silence."""
    path = write_jsonl(tmp_path / "one.jsonl", [{"text": "the cat sat on the mat"}])
    cfg = config(train=str(path), tokenizer="train")
    with pytest.warns(UserWarning, match=r"has \d+ entries, fewer than vocab_size 8,192"):
        tokenizer = resolve_tokenizer(cfg, run_dir=tmp_path / "run")
    assert len(tokenizer) < 300
