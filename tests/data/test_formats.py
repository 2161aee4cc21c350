"""Every file format, format detection, and path forms (file, directory, glob, package)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from okto.data import DataError, DataWarning, build_datasets
from okto.data.files import detect_format, resolve_files
from tests.data.helpers import (
    config,
    real_text,
    write_csv,
    write_json,
    write_jsonl,
    write_parquet,
)

RECORDS = [{"id": i, "text": f"hello world {i}"} for i in range(4)]
EXPECTED = [f"hello world {i}<|endoftext|>" for i in range(4)]


def _rows_text(path: Path, tokenizer, **fields) -> list[str]:
    """Decoded rows, one per record; validating on the same file keeps all four in train."""
    cfg = config(
        train=str(path), validation=str(path), packing=False, max_length=32, shuffle=False, **fields
    )
    splits = build_datasets(cfg, tokenizer)
    return [real_text(tokenizer, row) for row in splits.train]


@pytest.mark.parametrize(
    ("name", "writer"),
    [
        ("data.jsonl", write_jsonl),
        ("data.json", write_json),
        ("data.csv", write_csv),
        ("data.tsv", lambda path, records: write_csv(path, records, delimiter="\t")),
        ("data.parquet", write_parquet),
    ],
)
def test_structured_formats(tmp_path, tokenizer, name, writer):
    path = writer(tmp_path / name, RECORDS)
    assert _rows_text(path, tokenizer) == EXPECTED


def test_parquet_turns_in_both_spellings(tmp_path, tokenizer):
    """Parquet gives every turn both key pairs (from/value and role/content), null where a
    turn lacks one; the nulls read as 'unknown role None' and dropped every record."""
    records = [
        {"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "one"}]},
        {"messages": [{"from": "human", "value": "world"}, {"from": "gpt", "value": "two"}]},
    ]
    path = write_parquet(tmp_path / "chat.parquet", records)
    assert _rows_text(path, tokenizer) == [
        "<|user|>\nhello\n<|assistant|>\none<|endoftext|>",
        "<|user|>\nworld\n<|assistant|>\ntwo<|endoftext|>",
    ]


def test_chat_turns_as_json_text_in_csv_cells(tmp_path, tokenizer):
    """A CSV cell cannot hold a list, so CSV chat data carries its turns as JSON text; that
    text (or the id before it, as the first string field) was trained as plain text."""
    turns = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "one"}]
    path = write_csv(tmp_path / "chat.csv", [{"id": "a", "messages": json.dumps(turns)}] * 2)
    assert _rows_text(path, tokenizer)[0] == "<|user|>\nhello\n<|assistant|>\none<|endoftext|>"


def test_format_tsv_reads_tab_separated_data_under_any_name(tmp_path, tokenizer):
    """`format: tsv` was refused; a tab-separated .txt could only be read as one column."""
    path = write_csv(tmp_path / "pairs_tab.txt", RECORDS, delimiter="\t")
    assert _rows_text(path, tokenizer, format="tsv") == EXPECTED


def test_txt_blocks_between_blank_lines_are_records(tmp_path, tokenizer):
    path = tmp_path / "notes.txt"
    path.write_text("hello world 0\n\n\nhello world 1\nsecond line\n\nhello world 2\n")
    assert _rows_text(path, tokenizer) == [
        "hello world 0<|endoftext|>",
        "hello world 1\nsecond line<|endoftext|>",
        "hello world 2<|endoftext|>",
    ]


def test_json_lines_in_a_json_file_and_a_wrapped_list(tmp_path, tokenizer):
    lines = write_jsonl(tmp_path / "lines.json", RECORDS)
    wrapped = write_json(tmp_path / "wrapped.json", {"data": RECORDS})
    assert detect_format(lines, "auto") == "jsonl"
    assert detect_format(wrapped, "auto") == "json"
    assert _rows_text(lines, tokenizer) == EXPECTED
    assert _rows_text(wrapped, tokenizer) == EXPECTED


@pytest.mark.parametrize("fmt", ["auto", "jsonl"])
def test_a_json_array_under_a_json_lines_name(tmp_path, tokenizer, fmt):
    """Every line of a pretty-printed array failed to parse ('17 of 17 lines are not valid
    JSON'), and a one-line array was one record that is not an object."""
    pretty = write_json(tmp_path / "pretty.jsonl", RECORDS)
    one_line = tmp_path / "one_line.ndjson"
    one_line.write_text("\ufeff" + json.dumps(RECORDS))
    assert _rows_text(pretty, tokenizer, format=fmt) == EXPECTED
    assert _rows_text(one_line, tokenizer, format=fmt) == EXPECTED


def test_json_lines_whose_first_line_is_longer_than_the_sniff_window(tmp_path):
    """A first record over 64 KB (a long ShareGPT conversation) was cut by the window, did
    not parse, and the JSON-lines file was read as one document: 'Extra data' at line 2."""
    long_first = [{"text": "hello " * 20_000}, *RECORDS]
    for name, fmt in (("long.json", "auto"), ("long.jsonl", "sharegpt")):
        assert detect_format(write_jsonl(tmp_path / name, long_first), fmt) == "jsonl"


def test_format_from_content_when_the_extension_says_nothing(tmp_path):
    array = tmp_path / "records.dat"
    array.write_text(json.dumps(RECORDS))
    parquet = write_parquet(tmp_path / "table.bin", RECORDS)
    assert detect_format(array, "auto") == "json"
    assert detect_format(parquet, "auto") == "parquet"
    assert detect_format(write_jsonl(tmp_path / "x.jsonl", RECORDS), "json") == "jsonl"


def test_json_strings_are_text_records(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "strings.jsonl", [f"hello world {i}" for i in range(4)])
    assert _rows_text(path, tokenizer) == EXPECTED


def test_sharegpt_format_reads_turns(tmp_path, tokenizer):
    record = {
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    }
    path = write_jsonl(tmp_path / "chats.jsonl", [record] * 2)
    text = _rows_text(path, tokenizer, format="sharegpt")[0]
    assert text == "<|user|>\nhi\n<|assistant|>\nhello<|endoftext|>"


def test_directory_and_glob(tmp_path, tokenizer):
    folder = tmp_path / "parts"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", RECORDS[:2])
    write_csv(folder / "b.csv", RECORDS[2:])
    (folder / "README").write_text("not data")
    (folder / ".hidden").mkdir()
    write_jsonl(folder / ".hidden" / "c.jsonl", RECORDS)
    assert [p.name for p in resolve_files(str(folder), tmp_path)] == ["a.jsonl", "b.csv"]
    assert [p.name for p in resolve_files("parts/*.jsonl", tmp_path)] == ["a.jsonl"]
    assert _rows_text(folder, tokenizer) == EXPECTED


def test_a_readme_in_a_data_folder_is_its_dataset_card(tmp_path, tokenizer):
    """A folder's README.md (the dataset card, to Hugging Face datasets) was trained on as
    text. Walking a folder skips it, saying so; named as a file it is read."""
    folder = tmp_path / "parts"
    (folder / "sub").mkdir(parents=True)
    write_jsonl(folder / "a.jsonl", RECORDS)
    (folder / "README.md").write_text("# My dataset\n\nLicense: MIT\n")
    (folder / "sub" / "Readme.MD").write_text("about sub\n")
    (folder / "notes.md").write_text("hello world notes\n")
    notes: list[str] = []
    assert [p.name for p in resolve_files("parts", tmp_path, notes)] == ["a.jsonl", "notes.md"]
    assert (
        len(notes) == 2
        and "parts/README.md: a README.md in a data folder is the dataset card" in notes[0]
    )
    assert resolve_files("parts/README.md", tmp_path) == [folder / "README.md"]

    with pytest.warns(DataWarning, match="skipped .*README.md: a README.md in a data folder"):
        splits = build_datasets(
            config(train=str(folder), validation=str(folder / "a.jsonl")), tokenizer
        )
    assert sorted(Path(f.path).name for f in splits.stats.files) == [
        "a.jsonl",
        "a.jsonl",
        "notes.md",
    ]
    assert sum("dataset card" in note for note in splits.stats.warnings) == 2

    (folder / "a.jsonl").unlink()
    (folder / "notes.md").unlink()
    (folder / "sub" / "Readme.MD").unlink()
    with pytest.raises(DataError, match=r"holds no data files .*; README\.md is its dataset card"):
        resolve_files("parts", tmp_path)


def test_okto_run_folders_in_a_data_folder_are_not_data(tmp_path):
    """`train: "."` beside the .okt file trained on runs/<project>/ too: its config,
    tokenizer files and metrics.jsonl."""
    write_jsonl(tmp_path / "a.jsonl", RECORDS)
    run = tmp_path / "runs" / "demo"
    (run / "tokenizer").mkdir(parents=True)
    (run / "okto_config.json").write_text("{}")
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    (run / "tokenizer" / "tokenizer.json").write_text("{}")
    assert [p.name for p in resolve_files(".", tmp_path)] == ["a.jsonl"]
    with pytest.raises(DataError, match=r"no data files outside okto's run folders \(1 skipped"):
        resolve_files("runs", tmp_path)


def test_a_saved_datasets_folder_is_named(tmp_path):
    """Its metadata was read as the data: 'dataset_info.json: none of its 1 records is
    usable', or 'dataset_dict.json: no usable text field (fields found: splits)'."""
    import datasets

    rows = datasets.Dataset.from_list(RECORDS)
    rows.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": rows}).save_to_disk(str(tmp_path / "dict"))
    for folder in ("saved", "dict"):
        with pytest.raises(DataError, match=rf"{folder} is a Hugging Face datasets folder"):
            resolve_files(folder, tmp_path)


def test_a_name_with_glob_characters_names_that_file(tmp_path):
    """`data[1].jsonl` was taken as a pattern (matching `data1.jsonl`): 'no files match'."""
    folder = tmp_path / "exp[1]"
    folder.mkdir()
    named = write_jsonl(folder / "data[1].jsonl", RECORDS)
    assert resolve_files("exp[1]/data[1].jsonl", tmp_path) == [named]
    assert resolve_files("exp[1]", tmp_path) == [named]


def test_package_paths_name_files_inside_installed_packages(tmp_path):
    (found,) = resolve_files("pkg:json/decoder.py", tmp_path)
    assert found.is_file() and found.parent.name == "json"
