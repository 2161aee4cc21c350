"""The streaming JSON array reader: complete files, cut-off files, real syntax errors."""

from __future__ import annotations

import json

import pytest

from okto.data import DataError, DataWarning, build_datasets, jsonarray
from okto.data.jsonarray import iter_json_array
from tests.data.helpers import chat, config


def _read(path):
    cuts = []
    return [value for value, _ in iter_json_array(path, cuts)], cuts


def _records(count: int) -> list[dict]:
    return [
        chat(("human", f"question {i}"), ("gpt", f"answer {i} " + "é" * i)) for i in range(count)
    ]


@pytest.fixture(params=[jsonarray.WINDOW_CHARS, 7], ids=["default-window", "tiny-window"])
def window(request, monkeypatch):
    """Also run with a 7-character window, so every record spans several refills."""
    monkeypatch.setattr(jsonarray, "WINDOW_CHARS", request.param)
    return request.param


def test_complete_array(tmp_path, window):
    records = [*_records(5), 1, 2.5e3, "text", None, True]
    path = tmp_path / "all.json"
    path.write_text(json.dumps(records, indent=2, ensure_ascii=False))
    assert _read(path) == (records, [])


def test_cut_mid_record_keeps_the_complete_ones(tmp_path, window):
    text = json.dumps(_records(6), indent=2, ensure_ascii=False)
    path = tmp_path / "cut.json"
    cut_at = text.index('"answer 5')  # inside the sixth record
    path.write_text(text[:cut_at])
    values, cuts = _read(path)
    assert values == _records(5)
    assert len(cuts) == 1 and cuts[0].chars > 0
    assert (
        cuts[0].line
        == text[: text.index('{\n    "conversations"', text.index("answer 4"))].count("\n") + 1
    )


def test_cut_inside_a_multibyte_character(tmp_path, window):
    raw = json.dumps(_records(4), ensure_ascii=False).encode()
    path = tmp_path / "cut.json"
    last_e = raw.rindex("é".encode())
    path.write_bytes(raw[: last_e + 1])  # half of the two-byte é
    values, cuts = _read(path)
    assert values == _records(3) and cuts[0].chars > 0


def test_missing_closing_bracket_only(tmp_path, window):
    path = tmp_path / "open.json"
    path.write_text(json.dumps(_records(3))[:-1] + "\n")
    values, cuts = _read(path)
    assert values == _records(3) and cuts[0].chars == 0


def test_numbers_at_the_window_edge_are_not_cut_short(tmp_path, monkeypatch):
    monkeypatch.setattr(jsonarray, "WINDOW_CHARS", 4)
    path = tmp_path / "numbers.json"
    path.write_text("[123456789, 98765.4321e2, true]")
    assert _read(path) == ([123456789, 98765.4321e2, True], [])


def test_syntax_error_before_the_end_names_line_and_column(tmp_path, window):
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"text": "a"},\n  {"text": "b",, "x": 1},\n  {"text": "c"}\n]\n')
    with pytest.raises(DataError, match=r"broken.json, line 3 column 16: invalid JSON"):
        _read(path)


def test_missing_comma_between_elements(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[{"text": "a"}\n {"text": "b"}]')
    with pytest.raises(DataError, match=r"line 2: expected ',' or ']'"):
        _read(path)


def test_pipeline_warns_and_reports_the_cut(tmp_path, tokenizer):
    text = json.dumps(_records(8), indent=2, ensure_ascii=False)
    path = tmp_path / "cut.json"
    path.write_text(text[: text.index('"answer 7')])
    with pytest.warns(DataWarning, match=r"cut off at line \d+: recovered the 7 complete records"):
        splits = build_datasets(config(train=str(path)), tokenizer)
    (stats,) = splits.stats.files
    assert stats.truncated and stats.records == 7 and stats.cut_chars > 0
    assert splits.stats.dropped == {"incomplete record at the cut": 1}
    assert any("cut off" in w for w in splits.stats.warnings)
    assert splits.stats.train.records + splits.stats.validation.records == 7


@pytest.mark.parametrize(
    ("text", "place"),
    [
        ('[{"text": "a"}]\n[{"text": "b"}]\n', "line 2 column 1"),  # two exports appended
        ('[{"text": "a"}] x', "line 1 column 17"),
        ("[]\n[]", "line 2 column 1"),
    ],
)
def test_data_after_the_closing_bracket_is_an_error(tmp_path, window, text, place):
    """It was ignored: the records of a second array were left out without a word."""
    path = tmp_path / "two.json"
    path.write_text(text)
    with pytest.raises(DataError, match=f"{place}: more data after the JSON array's closing"):
        _read(path)
    path.write_text('[{"text": "a"}]\n  \n')
    assert _read(path) == ([{"text": "a"}], [])
