"""Record readers, one per file format, each yielding (record, location).

A location ("line 12", "row 3", "record 7") lets later errors name the place.
JSON lines are read here line by line so a broken line can be named and
skipped; CSV and Parquet go through `datasets`' own builders; JSON arrays
through the recovering reader in `jsonarray`.

Broken JSON lines: up to `MAX_BROKEN_SHARE` of a file's lines are skipped with
a warning and counted; more than that means the file is not JSON lines (or is
badly damaged) and reading stops with an error naming the first bad line.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from okto.data.encoding import not_utf8, refuse_other_encodings
from okto.data.errors import JSON_ERRORS, DataError, json_reason, warn
from okto.data.jsonarray import Cut, iter_json_array
from okto.data.progress import quiet_datasets
from okto.data.stats import FileStats

MAX_BROKEN_SHARE = 0.05
# Keys under which a JSON object file may wrap its list of records.
WRAPPER_KEYS = ("data", "train", "rows", "records", "examples", "instances")

Records = Iterator[tuple[Any, str]]


def read_records(path: Path, fmt: str, stats: FileStats, notes: list[str]) -> Records:
    """The records of one file; skipped lines and cuts go into `stats` and `notes`."""
    if fmt != "parquet":
        refuse_other_encodings(path)
    if fmt == "jsonl":
        return _read_jsonl(path, stats, notes)
    if fmt == "json":
        return _read_json(path, stats, notes)
    if fmt == "txt":
        return _read_txt(path)
    if fmt in ("csv", "tsv"):
        return _read_with_datasets(
            path, "csv", sep="\t" if fmt == "tsv" else _separator(path, notes)
        )
    if fmt == "parquet":
        return _read_with_datasets(path, "parquet")
    raise DataError(f"{path}: unknown format {fmt!r}")


def _read_jsonl(path: Path, stats: FileStats, notes: list[str]) -> Records:
    lines, broken, first = 0, 0, ""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            lines += 1
            try:
                record = json.loads(raw)
            except JSON_ERRORS as error:  # UnicodeDecodeError included
                broken += 1
                first = first or f"line {number}: {json_reason(error)}"
                continue
            yield record, f"line {number}"
    if not broken:
        return
    if broken > MAX_BROKEN_SHARE * lines:
        raise DataError(
            f"{path}: {broken} of {lines} lines are not valid JSON (first at {first}); "
            f"okto skips at most {MAX_BROKEN_SHARE:.0%} of a file's lines"
        )
    stats.broken_lines = broken
    warn(
        f"{path}: skipped {broken} of {lines} lines that are not valid JSON (first at {first})",
        notes,
    )


def _read_json(path: Path, stats: FileStats, notes: list[str]) -> Records:
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        is_array = f.read(1 << 16).lstrip().startswith("[")
    if not is_array:
        yield from _read_json_object(path)
        return
    cuts: list[Cut] = []
    recovered = 0
    for recovered, (record, line) in enumerate(iter_json_array(path, cuts), 1):
        yield record, f"record {recovered} (line {line})"
    if cuts:
        cut = cuts[0]
        stats.truncated, stats.cut_line, stats.cut_chars = True, cut.line, cut.chars
        tail = "an incomplete record" if cut.chars else "the closing bracket"
        warn(
            f"{path} is cut off at line {cut.line}: recovered the {recovered:,} complete "
            f"records before the cut and dropped {tail} ({cut.chars:,} characters)",
            notes,
        )


def _read_json_object(path: Path) -> Records:
    """A whole-file JSON object: a list of records under a wrapper key, or one record."""
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError:
        raise not_utf8(path) from None
    except json.JSONDecodeError as error:
        raise DataError(
            f"{path}, line {error.lineno} column {error.colno}: invalid JSON ({error.msg})"
        ) from None
    except JSON_ERRORS as error:
        raise DataError(f"{path}: cannot read it as JSON ({json_reason(error)})") from None
    key = next(
        (k for k in WRAPPER_KEYS if isinstance(data, dict) and isinstance(data.get(k), list)), None
    )
    items = data[key] if key else [data]
    for number, record in enumerate(items, 1):
        yield record, f"record {number}"


def _read_txt(path: Path) -> Records:
    """Plain text: every block of lines between blank lines is one record."""
    block: list[str] = []
    start = 0
    try:
        with open(path, encoding="utf-8-sig") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    start = start or number
                    block.append(line)
                elif block:
                    yield {"text": "".join(block).rstrip("\n")}, f"line {start}"
                    block, start = [], 0
    except UnicodeDecodeError:
        raise not_utf8(path) from None
    if block:
        yield {"text": "".join(block).rstrip("\n")}, f"line {start}"


def _read_with_datasets(path: Path, builder: str, **options) -> Records:
    """CSV and Parquet through `datasets`, read in batches so rows stay in Arrow."""
    import datasets
    from datasets.exceptions import DatasetGenerationError

    if _no_rows(path, builder):
        return
    if builder == "csv":
        # Cells stay as written: empty stays "", not NaN.
        options["keep_default_na"] = False
    with tempfile.TemporaryDirectory(prefix="okto-read-") as tmp, quiet_datasets():
        loader = datasets.Dataset.from_csv if builder == "csv" else datasets.Dataset.from_parquet
        try:
            table = loader(str(path), cache_dir=tmp, **options)
        except (DatasetGenerationError, ValueError, OSError) as error:
            cause = error.__cause__ or error
            if isinstance(cause, UnicodeDecodeError):
                raise not_utf8(path) from None
            raise DataError(f"{path}: cannot read it as {builder}: {cause}") from None
        number = 0
        for batch in table.iter(batch_size=1024):
            columns = list(batch)
            for values in zip(*(batch[c] for c in columns), strict=True):
                number += 1
                yield dict(zip(columns, values, strict=True)), f"row {number}"


def _separator(path: Path, notes: list[str]) -> str:
    """A CSV file's separator: a comma, or the semicolon or tab of a header that has one and
    no comma (spreadsheets export semicolons where the comma is the decimal mark), which
    read with commas made one column named `input;output`, trained as text unnoticed."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        header = f.readline()
    other = next((sep for sep in (";", "\t") if sep in header), None)
    if "," in header or other is None:
        return ","
    warn(
        f"{path}: its header has no comma but has {other!r}: read with {other!r} as separator",
        notes,
    )
    return other


def _no_rows(path: Path, builder: str) -> bool:
    """A header-only CSV or a Parquet file without rows (datasets refuses both)."""
    if builder == "parquet":
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(path).metadata.num_rows == 0
        except (OSError, ValueError):
            return False  # not Parquet: datasets' error says so
    with open(path, "rb") as f:
        lines = (line for line in f if line.strip())
        return next(lines, None) is None or next(lines, None) is None
