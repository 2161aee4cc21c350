"""A JSON array cut off at any byte of its last record: every complete record is kept."""

from __future__ import annotations

import json

import pytest

from okto.data import DataError
from okto.data.jsonarray import iter_json_array

RECORD = {"id": -12.5e3, "flag": True, "none": None, "off": False, "n": 7, "text": "café 😀"}


def _read(path):
    cuts = []
    return [value for value, _ in iter_json_array(path, cuts)], cuts


def test_a_cut_inside_a_literal_a_number_or_an_escape_is_a_cut(tmp_path):
    """A cut inside `true`, `null`, `1.5e+3` or a `\\u` escape was refused as invalid JSON
    (json names the place it stopped, not the end), the whole file with it."""
    head = json.dumps([RECORD, RECORD])[:-1] + ", "
    last = json.dumps(RECORD)  # ensure_ascii: the text holds \\u escapes
    path = tmp_path / "cut.json"
    for end in range(len(last)):
        path.write_text(head + last[:end])
        values, cuts = _read(path)
        assert values == [RECORD, RECORD], last[:end]
        assert len(cuts) == 1 and cuts[0].chars == end


@pytest.mark.parametrize("tail", ['{"a": tree', '{"a": 1x', '{"a": "\\uzz', '{"a": nul}'])
def test_a_bad_value_at_the_end_is_still_an_error(tmp_path, tail):
    path = tmp_path / "bad.json"
    path.write_text('[{"a": 1}, ' + tail)
    with pytest.raises(DataError, match="invalid JSON"):
        _read(path)
