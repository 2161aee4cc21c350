"""dataset_percent, mix_datasets weights, shuffle and the validation split: seeded and exact."""

from __future__ import annotations

import pytest

from okto.data import DataError, DataWarning, build_datasets
from tests.data.helpers import config, write_jsonl


def _numbered(tmp_path, name: str, count: int, word: str = "hello"):
    return write_jsonl(tmp_path / name, [{"text": f"{word} {i}"} for i in range(count)])


def _texts(split, tokenizer) -> list[str]:
    return tokenizer.batch_decode(split[:]["input_ids"], skip_special_tokens=True)


def _build(tokenizer, seed=0, **fields):
    return build_datasets(config(packing=False, max_length=16, **fields), tokenizer, seed=seed)


def test_percent_takes_a_seeded_share(tmp_path, tokenizer):
    path = str(_numbered(tmp_path, "d.jsonl", 100))
    first = _build(tokenizer, train=path, validation=path, dataset_percent=10)
    again = _build(tokenizer, train=path, validation=path, dataset_percent=10)
    other = _build(tokenizer, seed=1, train=path, validation=path, dataset_percent=10)
    assert len(first.train) == 10
    assert _texts(first.train, tokenizer) == _texts(again.train, tokenizer)
    assert sorted(_texts(first.train, tokenizer)) != sorted(_texts(other.train, tokenizer))
    ordered = _build(tokenizer, train=path, validation=path, dataset_percent="5%", shuffle=False)
    assert _texts(ordered.train, tokenizer) == [f"hello {i}" for i in range(5)]


def test_shuffle_is_seeded_and_off_keeps_file_order(tmp_path, tokenizer):
    path = str(_numbered(tmp_path, "d.jsonl", 30))
    a = _texts(_build(tokenizer, train=path, validation=path).train, tokenizer)
    b = _texts(_build(tokenizer, train=path, validation=path).train, tokenizer)
    c = _texts(_build(tokenizer, seed=5, train=path, validation=path).train, tokenizer)
    kept = _texts(_build(tokenizer, train=path, validation=path, shuffle=False).train, tokenizer)
    assert a == b != c and sorted(a) == sorted(c) == sorted(kept)
    assert kept == [f"hello {i}" for i in range(30)]


def test_mix_weights_are_sampling_proportions(tmp_path, tokenizer):
    big = str(_numbered(tmp_path, "big.jsonl", 40, "hello"))
    small = str(_numbered(tmp_path, "small.jsonl", 40, "world"))
    mix = [{"path": big, "weight": 75}, {"path": small, "weight": 25}]
    with pytest.warns(
        DataWarning, match=r"fewer records from the larger sources: .*small.jsonl: 13 of 40 \("
    ):
        splits = _build(tokenizer, mix_datasets=mix, validation=big)  # most of one left out
    texts = _texts(splits.train, tokenizer)
    # The 75% source runs out first: its 40 records mean 13 at 25%.
    assert sum(t.startswith("hello") for t in texts) == 40
    assert sum(t.startswith("world") for t in texts) == 13
    assert [m["records"] for m in splits.stats.mix] == [40, 13]
    assert texts == _texts(_build(tokenizer, mix_datasets=mix, validation=big).train, tokenizer)


def test_validation_is_held_out_from_train_by_default(tmp_path, tokenizer):
    path = str(_numbered(tmp_path, "d.jsonl", 200))
    splits = _build(tokenizer, train=path)
    train, validation = _texts(splits.train, tokenizer), _texts(splits.validation, tokenizer)
    assert len(validation) == 2 and len(train) == 198  # 1%
    assert not set(train) & set(validation)
    assert splits.stats.validation_from == "split of the training data"
    assert validation == _texts(_build(tokenizer, train=path).validation, tokenizer)


def test_validation_and_test_files(tmp_path, tokenizer):
    train = str(_numbered(tmp_path, "train.jsonl", 10))
    validation = str(_numbered(tmp_path, "val.jsonl", 4, "world"))
    splits = _build(tokenizer, train=train, validation=validation, test=validation)
    assert len(splits.train) == 10
    assert _texts(splits.validation, tokenizer) == [f"world {i}" for i in range(4)]
    assert len(splits.test) == 4
    assert splits.stats.validation_from == "file"


def test_a_single_record_is_not_split(tmp_path, tokenizer):
    path = str(_numbered(tmp_path, "one.jsonl", 1))
    with pytest.warns(DataWarning, match="single record: no validation split"):
        splits = _build(tokenizer, train=path)
    assert len(splits.train) == 1 and splits.validation is None
    assert splits.stats.validation_from == "none"


def test_a_validation_file_that_is_training_data_is_reported(tmp_path, tokenizer):
    path, copy = (str(_numbered(tmp_path, name, 20)) for name in ("train.jsonl", "copy.jsonl"))
    other = str(_numbered(tmp_path, "other.jsonl", 20, word="world"))
    with pytest.warns(DataWarning, match="validation file .*copy.jsonl holds the same data"):
        splits = _build(tokenizer, train=path, validation=copy, test=other)
    assert not any("other.jsonl" in note for note in splits.stats.warnings)
    assert any("will not show overfitting" in note for note in splits.stats.warnings)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        (
            {
                "mix_datasets": [
                    {"path": "a.jsonl", "weight": 50},
                    {"path": "a.jsonl", "weight": 50},
                ]
            },
            "'a.jsonl' twice",
        ),
        (
            {
                "mix_datasets": [
                    {"path": "a.jsonl", "weight": 50},
                    {"path": "*.jsonl", "weight": 50},
                ]
            },
            "'a.jsonl' and '\\*.jsonl'",
        ),
        (
            {
                "mix_datasets": [
                    {"path": "a.jsonl", "weight": 50},
                    {"path": "link.jsonl", "weight": 50},
                ]
            },
            "'a.jsonl' and 'link.jsonl'",
        ),
    ],
)
def test_a_training_file_named_twice_is_refused(tmp_path, tokenizer, fields, named):
    """Its records were read twice and trained twice over, silently; the mix promises no
    record repeats and a weight is how a source gets more of the mix."""
    _numbered(tmp_path, "a.jsonl", 10)
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "a.jsonl")
    with pytest.raises(DataError, match=f"training file .*a.jsonl is named by {named} among"):
        build_datasets(config(**fields), tokenizer, base_dir=tmp_path)
    assert DataError.exit_code == 2


def test_a_copy_of_a_training_file_is_reported(tmp_path, tokenizer):
    path, copy = (str(_numbered(tmp_path, name, 20)) for name in ("a.jsonl", "copy.jsonl"))
    other = str(_numbered(tmp_path, "other.jsonl", 20, word="world"))
    mix = [{"path": p, "weight": 100 / 3} for p in (path, copy, other)]
    with pytest.warns(DataWarning, match="training files .*a.jsonl and .*copy.jsonl hold the same"):
        splits = _build(tokenizer, mix_datasets=mix)
    assert sum("hold the same data" in note for note in splits.stats.warnings) == 1
