"""CSV files as spreadsheets export them."""

from __future__ import annotations

import pytest

from okto.data import build_datasets
from okto.data.errors import DataWarning
from tests.data.helpers import config


def test_a_semicolon_csv_is_read_by_its_columns(tmp_path, tokenizer):
    """Read with commas, `input;output` was one text column: `hi;yo` trained as text."""
    path = tmp_path / "pairs.csv"
    path.write_text("input;output\nhello world;answer one\ntwo;three\n")
    with pytest.warns(DataWarning, match="has ';': read with ';' as separator"):
        splits = build_datasets(config(train=str(path), validation=str(path)), tokenizer)
    assert splits.stats.files[0].fields == "input 'input', output 'output'"
    assert splits.stats.files[0].kept == 2
