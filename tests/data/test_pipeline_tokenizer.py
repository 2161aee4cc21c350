"""A trained tokenizer saved with the run: damaged files, and resuming after the data changed."""

from __future__ import annotations

import pytest

from okto.data import DataWarning, resolve_tokenizer
from okto.data import tokenizer as tokenizer_module
from tests.data.helpers import config, write_jsonl


def _texts(path, count: int, word: str = "tokens"):
    return write_jsonl(
        path, [{"text": f"record {i} holds {word} and more {word}"} for i in range(count)]
    )


@pytest.mark.parametrize(
    "damaged, text",
    [(tokenizer_module.META_FILE, '{"key": '), ("tokenizer.json", '{"version": "1.0", "mod')],
)
def test_a_damaged_saved_tokenizer_is_trained_again(tmp_path, damaged, text):
    """A cut-off okto_tokenizer.json or tokenizer.json in the run folder was a traceback."""
    cfg = config(train=str(_texts(tmp_path / "a.jsonl", 30)), tokenizer="train", vocab_size=320)
    first = resolve_tokenizer(cfg, run_dir=tmp_path / "run")
    (tmp_path / "run" / "tokenizer" / damaged).write_text(text)
    again = resolve_tokenizer(cfg, run_dir=tmp_path / "run")
    assert again.get_vocab() == first.get_vocab()
    reloaded = resolve_tokenizer(cfg, run_dir=tmp_path / "run")  # saved whole again
    assert reloaded.get_vocab() == first.get_vocab()


def test_resuming_keeps_the_runs_trained_tokenizer_when_the_data_changed(tmp_path):
    """Resuming after an edit of the data trained a new tokenizer over the run's: the
    checkpoint no longer fit (another vocabulary size), or its token ids meant others."""
    data = _texts(tmp_path / "a.jsonl", 30)
    cfg = config(train=str(data), tokenizer="train", vocab_size=320)
    first = resolve_tokenizer(cfg, run_dir=tmp_path / "run")
    _texts(data, 40, word="zebra quantum xylophone")
    with pytest.warns(DataWarning, match="resuming keeps it"):
        resumed = resolve_tokenizer(cfg, run_dir=tmp_path / "run", resuming=True)
    assert resumed.get_vocab() == first.get_vocab()
    fresh = resolve_tokenizer(cfg, run_dir=tmp_path / "run")  # a new run trains afresh
    assert fresh.get_vocab() != first.get_vocab()
