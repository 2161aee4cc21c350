"""Reading data files into one table of normalized records (turns and how to train them).

Fields are detected once per file, from its first records, then applied to
every record; a record that does not fit (missing or empty field, wrong type,
no assistant turn) is dropped and counted by reason. Records stream through in
batches into Arrow, so a large file never exists as Python objects all at once.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from okto.data.errors import DataError, warn
from okto.data.fields import FieldPlan, Unusable, check_type, detect, no_fields_error, to_turns
from okto.data.files import detect_format
from okto.data.readers import read_records
from okto.data.settings import DataSettings
from okto.data.stats import FileStats

SCHEMA = pa.schema(
    [
        ("roles", pa.list_(pa.string())),
        ("texts", pa.list_(pa.large_string())),
        ("templated", pa.bool_()),
        ("train_all", pa.bool_()),
    ]
)
NOT_AN_OBJECT = "not an object"
DETECT_WITHIN = 100  # records looked at to find the fields before giving up
BATCH_RECORDS = 4096
# Types whose pairs go through the chat template; `generation` and `text` stay raw.
TEMPLATED_PAIR_TYPES = ("instruction", "chat", "qa")


def read_files(
    files: list[Path], settings: DataSettings, stats: list[FileStats], notes: list[str]
) -> pa.Table:
    """The usable records of `files`, in file order; per-file statistics go into `stats`."""
    batches: list[pa.RecordBatch] = []
    for path in files:
        file_stats = FileStats(path=str(path), format=detect_format(path, settings.format))
        stats.append(file_stats)
        batches += _read_file(path, settings, file_stats, notes)
    return pa.Table.from_batches(batches, schema=SCHEMA)


def _read_file(
    path: Path, settings: DataSettings, stats: FileStats, notes: list[str]
) -> list[pa.RecordBatch]:
    plan, kind = None, ""
    seen_fields: dict[str, None] = {}
    pending: list[tuple[dict, str]] = []  # records seen before the fields were found
    batches, columns = [], _empty_columns()
    absent_context = set(settings.context_fields)  # named, and in no record so far
    for record, where in read_records(path, stats.format, stats, notes):
        stats.records += 1
        if isinstance(record, str):
            record = {"text": record}
        if not isinstance(record, dict):
            stats.drop(NOT_AN_OBJECT, where)
            continue
        if absent_context:
            absent_context.difference_update(record)
        if plan is None:
            seen_fields.update(dict.fromkeys(record))
            plan = detect(record, settings)
            if plan is None:
                pending.append((record, where))
                if len(pending) >= DETECT_WITHIN:
                    raise no_fields_error(path, list(seen_fields), settings)
                continue
            kind = _resolve_type(plan, settings, path, list(seen_fields))
            stats.fields, stats.type = plan.describe(), kind
            _report_guess(path, plan, notes)
            for earlier, earlier_where in pending:
                _add(earlier, earlier_where, plan, kind, columns, stats)
            pending.clear()
        _add(record, where, plan, kind, columns, stats)
        if len(columns["roles"]) >= BATCH_RECORDS:
            batches.append(pa.RecordBatch.from_pydict(columns, schema=SCHEMA))
            columns = _empty_columns()
    if columns["roles"]:
        batches.append(pa.RecordBatch.from_pydict(columns, schema=SCHEMA))
    _check_file(path, plan, seen_fields, settings, stats, notes)
    _report_unused_context(path, plan, settings, absent_context, notes)
    return batches


def _report_unused_context(
    path: Path, plan: FieldPlan, settings: DataSettings, absent: set[str], notes: list[str]
) -> None:
    """context_fields that add nothing to a file's prompts: its records are not pairs (text
    or chat turns have no prompt to join them to), or no record has the field (a misspelt
    name read as an empty context)."""
    named = ", ".join(map(repr, settings.context_fields))
    if named and plan.shape != "pair":
        warn(
            f"{path}: context_fields {named} go before a pair's input, and okto found "
            f"{plan.describe()}: they are not used",
            notes,
        )
    elif absent:
        warn(
            f"{path}: no record has context_fields {', '.join(map(repr, sorted(absent)))}, "
            "so they add nothing to the prompts",
            notes,
        )


def _report_guess(path: Path, plan: FieldPlan, notes: list[str]) -> None:
    """No known field name, so the first string field is the text: say which one, since
    it may be an id or a title, and a lone field of another name (`content`, `prompt`
    without its completion) trained without a word; and say which fields that leaves out
    ({"id": ..., "body": ...}, {"id": ..., "conversation": [...]})."""
    if plan.guessed:
        left_out = ", ".join(map(repr, plan.passed_over))
        keep = json.dumps(plan.source, ensure_ascii=False)
        warn(
            f"{path}: no known text field, so okto trains the first string field, "
            f"{plan.source!r}{f', and leaves out {left_out}' if left_out else ''}; "
            f"set DATASET text_field (text_field: {keep} to keep it), "
            "or input_field and output_field",
            notes,
        )


def _empty_columns() -> dict[str, list]:
    return {name: [] for name in SCHEMA.names}


def _resolve_type(plan: FieldPlan, settings: DataSettings, path: Path, fields: list[str]) -> str:
    if settings.format == "sharegpt" and plan.shape != "chat":
        raise DataError(
            f"{path}: format sharegpt needs chat turns (`conversations` or `messages`), "
            f"but okto found {plan.describe()}"
        )
    kind = settings.type or plan.default_type()
    check_type(plan, kind, path, fields)
    return kind


def _add(
    record: dict, where: str, plan: FieldPlan, kind: str, columns: dict[str, list], stats: FileStats
) -> None:
    train_all = kind == "text"
    try:
        roles, texts = to_turns(record, plan, assistant_only=not train_all)
    except Unusable as reason:
        stats.drop(str(reason), where)
        return
    columns["roles"].append(roles)
    columns["texts"].append(texts)
    columns["templated"].append(
        plan.shape == "chat" or (plan.shape == "pair" and kind in TEMPLATED_PAIR_TYPES)
    )
    columns["train_all"].append(train_all)
    stats.kept += 1


def _check_file(path, plan, seen_fields, settings, stats: FileStats, notes: list[str]) -> None:
    if stats.records == 0:
        raise DataError(f"data file {path} is empty (no records)")
    if stats.dropped.get(NOT_AN_OBJECT) == stats.records:
        hint = "; a file holding one JSON array of records is read with format json or auto"
        raise DataError(
            f"{path}: no record is an object with fields ({stats.records:,} read; the first, "
            f"at {stats.first_dropped}, is not one){hint if stats.format == 'jsonl' else ''}"
        )
    if plan is None:
        raise no_fields_error(path, list(seen_fields), settings)
    reasons = ", ".join(f"{n} {r}" for r, n in sorted(stats.dropped.items(), key=lambda x: -x[1]))
    if stats.kept == 0:
        raise DataError(f"{path}: none of its {stats.records} records is usable ({reasons})")
    unusable = sum(stats.dropped.values())
    if unusable:
        warn(
            f"{path}: dropped {unusable:,} of {stats.records:,} records "
            f"({reasons}; the first at {stats.first_dropped})",
            notes,
        )
