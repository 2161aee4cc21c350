"""Bad data gives a clear DataError (exit code 2) naming the file, never a traceback."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from okto.data import DataError, DataWarning, build_datasets
from okto.errors import EXIT_INVALID, OktoError
from tests.data.helpers import config, write_jsonl


def _build(tokenizer, path, **fields):
    return build_datasets(config(train=str(path), **fields), tokenizer)


def test_data_errors_are_invalid_input():
    assert issubclass(DataError, OktoError) and DataError.exit_code == EXIT_INVALID == 2


def test_missing_file(tmp_path, tokenizer):
    with pytest.raises(DataError, match=r"data file .*nothere.jsonl does not exist"):
        _build(tokenizer, tmp_path / "nothere.jsonl")


def test_no_match_and_empty_directory(tmp_path, tokenizer):
    with pytest.raises(DataError, match=r"no files match '.*\*.jsonl'"):
        _build(tokenizer, tmp_path / "*.jsonl")
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match=r"folder holds no data files \(.jsonl"):
        _build(tokenizer, tmp_path / "folder")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.jsonl", "", r"empty.jsonl is empty"),
        ("blank.jsonl", "\n  \n", r"blank.jsonl is empty \(no records\)"),
        ("empty.json", "[]", r"empty.json is empty \(no records\)"),
        ("header.csv", "text,label\n", r"header.csv is empty \(no records\)"),
    ],
)
def test_empty_files(tmp_path, tokenizer, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        _build(tokenizer, path)


def test_parquet_without_rows(tmp_path, tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "none.parquet"
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), path)
    with pytest.raises(DataError, match=r"none.parquet is empty \(no records\)"):
        _build(tokenizer, path)


def test_no_usable_text_field_lists_the_fields(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "numbers.jsonl", [{"score": 1, "tags": ["a"]}] * 3)
    with pytest.raises(
        DataError,
        match=r"numbers.jsonl: no usable text field \(fields found: score, tags\); "
        r"set DATASET text_field",
    ):
        _build(tokenizer, path)


def test_records_that_are_not_objects_are_named_as_such(tmp_path, tokenizer):
    """Lines of lists said 'no usable text field (fields found: none)'."""
    path = tmp_path / "lists.jsonl"
    path.write_text('[{"text": "hello"}]\n[{"text": "world"}]\n')
    with pytest.raises(
        DataError,
        match=r"no record is an object with fields \(2 read; the first, "
        r"at line 1, is not one\); .* read with format json or auto",
    ):
        _build(tokenizer, path)
    # An array already read as one: the hint to read it as an array was beside the point.
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps([["hello", "world"], ["one", "two"]]))
    with pytest.raises(
        DataError, match=r"\(2 read; the first, at record 1 \(line 1\), is not one\)$"
    ):
        _build(tokenizer, pairs)


def test_named_field_missing_from_every_record(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [{"body": "hello"}] * 3)
    with pytest.raises(DataError, match=r"no record has text_field 'text' \(fields found: body\)"):
        _build(tokenizer, path, text_field="text")


def test_a_named_output_without_an_input_says_the_input_is_missing(tmp_path, tokenizer):
    """It said "no record has output_field 'answer'" of records that all had one."""
    path = write_jsonl(tmp_path / "d.jsonl", [{"question_text": "q", "answer": "a"}] * 3)
    with pytest.raises(
        DataError,
        match=r"no record has both an input field \(input, instruction, prompt, question; or "
        r"set input_field\) and output_field 'answer' \(fields found: question_text, answer\)",
    ):
        _build(tokenizer, path, output_field="answer")
    with pytest.raises(DataError, match=r"both input_field 'q' and output_field 'a' \("):
        _build(tokenizer, path, input_field="q", output_field="a")


def test_broken_json_lines_are_refused_past_the_threshold(tmp_path, tokenizer):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": "hello"}\n{"text": "world"\n{"text": "again"}\n')
    with pytest.raises(
        DataError, match=r"broken.jsonl: 1 of 3 lines are not valid JSON \(first at line 2: "
    ):
        _build(tokenizer, path)


def test_the_json_message_reads_once(tmp_path, tokenizer):
    """json's "Invalid control character at" gets its column once, not "at at column"."""
    path = tmp_path / "tab.jsonl"
    path.write_text('{"text": "a\tb"}\n{"text": "ok"}\n')
    with pytest.raises(DataError, match=r"Invalid control character at column 12\)") as raised:
        _build(tokenizer, path)
    assert "at at" not in str(raised.value)


def test_a_few_broken_lines_are_skipped_with_a_warning(tmp_path, tokenizer):
    lines = [json.dumps({"text": f"hello {i}"}) for i in range(40)]
    lines[16] = '{"text": "cut'
    lines[30] = b"\xff\xfe".decode("latin-1")
    path = tmp_path / "mostly.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="latin-1")
    validation = write_jsonl(tmp_path / "val.jsonl", [{"text": "hello"}])
    with pytest.warns(DataWarning, match=r"skipped 2 of 40 lines .*first at line 17"):
        splits = _build(tokenizer, path, validation=str(validation), packing=False)
    assert splits.stats.files[0].broken_lines == 2
    assert splits.stats.dropped == {"broken JSON line": 2}
    assert len(splits.train) == 38


@pytest.mark.parametrize("fmt", ["auto", "jsonl", "csv"])
def test_compressed_files_are_named(tmp_path, tokenizer, fmt):
    """A .jsonl.gz asked for a format (which cannot help); read as JSON lines it was 'not
    UTF-8 text', as CSV 'empty (no records)'."""
    import gzip

    path = tmp_path / "data.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"text": "hello"}\n' * 20))
    with pytest.raises(DataError, match=r"data.jsonl.gz is gzip-compressed, .* \(with gunzip\)"):
        _build(tokenizer, path, format=fmt)


# JSON that parses as syntax but that json cannot turn into values: these were a ValueError
# and a RecursionError traceback instead of a data error.
TOO_MANY_DIGITS = '{"text": "x", "n": ' + "1" * 5000 + "}"
TOO_DEEP = '{"text": "x", "n": ' + "[" * 100_000 + "]" * 100_000 + "}"


@pytest.mark.parametrize(
    ("bad", "reason"),
    [(TOO_MANY_DIGITS, r"Exceeds the limit \(4300 digits\)"), (TOO_DEEP, "nested too deeply")],
)
def test_values_json_cannot_hold_are_named(tmp_path, tokenizer, bad, reason):
    lines = [json.dumps({"text": f"hello {i}"}) for i in range(40)]
    path = tmp_path / "lines.jsonl"
    path.write_text("\n".join([*lines, bad]) + "\n")
    with pytest.warns(DataWarning, match=rf"skipped 1 of 41 lines .*line 41: {reason}"):
        _build(tokenizer, path, validation=str(path))
    array = tmp_path / "array.json"
    array.write_text("[\n" + ",\n".join([*lines[:3], bad]) + "]")
    with pytest.raises(DataError, match=rf"array.json, line 5: cannot read the record .*{reason}"):
        _build(tokenizer, array)
    single = tmp_path / "single.json"
    single.write_text(bad)
    with pytest.raises(DataError, match=rf"single.json: cannot read it as JSON \({reason}"):
        _build(tokenizer, single)


def test_records_cut_or_dropped_while_making_rows_are_warned(tmp_path, tokenizer):
    """Without packing, long records are cut and prompt-only ones dropped: that was in
    the statistics only."""
    long = " ".join(["word"] * 200)
    records = [{"input": "question", "output": long}] * 3 + [{"input": long, "output": "x"}]
    path = write_jsonl(tmp_path / "pairs.jsonl", records)
    validation = write_jsonl(tmp_path / "val.jsonl", [{"text": "hello"}])
    with pytest.warns(DataWarning) as caught:
        splits = _build(tokenizer, path, validation=str(validation), packing=False, max_length=32)
    said = [str(w.message) for w in caught]
    assert splits.stats.train.truncated == 4
    assert (
        "train rows: 4 of 4 records longer than max_length (32) were cut; "
        "1 dropped (no trained tokens within max_length)" in said
    )


def test_wrong_types_everywhere(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "wrong.jsonl", [{"input": "a", "output": {"x": 1}}] * 3)
    with pytest.raises(
        DataError, match=r"none of its 3 records is usable \(3 'output' is not text\)"
    ):
        _build(tokenizer, path)


def test_type_that_the_fields_cannot_serve(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "plain.jsonl", [{"text": "hello", "id": "1"}] * 3)
    with pytest.raises(
        DataError,
        match=r"type 'instruction' needs input and output fields .* \(fields: text, id\); "
        r"set input_field and output_field",
    ):
        _build(tokenizer, path, type="instruction")
    with pytest.raises(DataError, match="format sharegpt needs chat turns"):
        _build(tokenizer, path, format="sharegpt")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.json", '{"data": [1, 2,]}', r"bad.json, line 1 column 16: invalid JSON"),
        ("bad.csv", "a,b\n1,2\n3,4,5,6\n", r"bad.csv: cannot read it as csv: .*line 3"),
        ("bad.parquet", "not parquet at all", r"bad.parquet: cannot read it as parquet"),
        ("data.xyz", "plain words", r"cannot tell the format of .*data.xyz .* set DATASET format"),
    ],
)
def test_unreadable_files(tmp_path, tokenizer, name, content, message, capfd):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(DataError, match=message):
        _build(tokenizer, path)
    assert "Failed to read" not in capfd.readouterr().err  # datasets' own log: said once


@pytest.mark.parametrize(
    ("name", "content", "place"),
    [
        ("latin.txt", b"first line\n\ncaf\xe9\n", "line 3 has byte 0xE9 at offset 15"),
        ("latin.json", b'[{"text": "caf\xe9"}]', "line 1 has byte 0xE9 at offset 14"),
        (
            "latin-object.json",
            b'{"data": [\n{"text": "\xe9"}]}',
            "line 2 has byte 0xE9 at offset 21",
        ),
        ("latin.csv", b"text\nok\ncaf\xe9\n", "line 3 has byte 0xE9 at offset 11"),
        ("latin.tsv", b"text\tid\ncaf\xe9\t1\n", "line 2 has byte 0xE9 at offset 11"),
    ],
)
def test_text_that_is_not_utf8_names_line_and_offset(tmp_path, tokenizer, name, content, place):
    """Every text format names the first bad byte the same way, counted in the file."""
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=rf"{name} is not UTF-8 text: {place}; save it as UTF-8"):
        _build(tokenizer, path)


def test_a_bad_byte_after_a_block_boundary_is_placed_in_the_file(tmp_path):
    """The offset counts whole blocks and a character split across two of them."""
    from okto.data.encoding import not_utf8

    path = tmp_path / "long.txt"
    head = b"a\n" * ((1 << 19) - 1) + b"x\xc3"  # a two-byte character split at 1 MiB
    path.write_bytes(head + b"(" + b"\n")
    error = not_utf8(path)
    assert f"line {1 << 19} has byte 0xC3 at offset {(1 << 20) - 1:,}" in str(error)


@pytest.mark.parametrize(
    ("mark", "name"), [(b"\xff\xfe", "UTF-16"), (b"\xff\xfe\x00\x00", "UTF-32")]
)
@pytest.mark.parametrize("suffix", ["jsonl", "csv", "txt"])
def test_utf16_and_utf32_files_are_named(tmp_path, tokenizer, mark, name, suffix):
    path = tmp_path / f"wide.{suffix}"
    path.write_bytes(mark + "text\nhello\n".encode(name.lower() + "-le"))
    with pytest.raises(
        DataError, match=rf"is {name} text \(it starts with a {name} byte-order mark\)"
    ):
        _build(tokenizer, path)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "DATASET has no training data"),
        ({"train": "x", "format": "xml"}, "DATASET format 'xml' is not one of"),
        ({"train": "x", "type": "poem"}, "DATASET type 'poem' is not one of"),
        ({"train": "x", "dataset_percent": 0}, r"dataset_percent must be in \(0, 100\]"),
        ({"train": "x", "vocab_size": 100}, "vocab_size must be at least 300"),
        ({"train": "x", "max_length": 1}, "max_length must be at least 2"),
        ({"mix_datasets": [{"path": "x", "weight": 0}]}, "weight for 'x' must be positive"),
    ],
)
def test_settings_read_by_attribute(tokenizer, fields, message):
    with pytest.raises(DataError, match=message):
        build_datasets(SimpleNamespace(**fields), tokenizer)


def test_slow_tokenizers_are_refused(tmp_path):
    slow = SimpleNamespace(is_fast=False, eos_token_id=0, name_or_path="slow")
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "hi"}])
    with pytest.raises(DataError, match="needs a fast tokenizer"):
        build_datasets(config(train=str(path)), slow)


def _long_prompts(count: int, bad: set[int] = frozenset(range(10**6))) -> list[dict]:
    """Pairs whose answer lies past max_length 8 (without packing) in records of `bad`."""
    prompt = "the model reads data and learns to answer questions about tokens"
    return [{"input": prompt if i in bad else "hello", "output": "yes"} for i in range(count)]


def test_a_validation_file_without_rows_is_an_error(tmp_path, tokenizer):
    """Its rows were all dropped, and the run went on without evaluating (an empty split),
    or crashed reading it back from the cache (IndexError)."""
    train = write_jsonl(tmp_path / "train.jsonl", _long_prompts(10, bad=set()))
    validation = write_jsonl(tmp_path / "val.jsonl", _long_prompts(3))
    cfg = config(train=str(train), validation=str(validation), max_length=8, packing=False)
    with pytest.raises(DataError, match="no validation rows are left: all records of the"):
        build_datasets(cfg, tokenizer, cache_dir=tmp_path / "cache")


def test_held_out_records_without_rows_leave_no_validation(tmp_path, tokenizer):
    from okto.data.selection import SPLIT, rng

    held_out = int(rng(0, SPLIT).choice(3, 1, replace=False)[0])
    path = write_jsonl(tmp_path / "train.jsonl", _long_prompts(3, bad={held_out}))
    cfg = config(train=str(path), max_length=8, packing=False)
    with pytest.warns(DataWarning, match="held out of the training data gave no rows"):
        splits = build_datasets(cfg, tokenizer, cache_dir=tmp_path / "cache")
    assert splits.validation is None and splits.stats.validation_from == "none"
    again = build_datasets(cfg, tokenizer, cache_dir=tmp_path / "cache")
    assert again.stats.cache_hit and again.validation is None and again.train.num_rows == 2
