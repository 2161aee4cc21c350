"""Small data files the data tests write, and ways to look at the rows okto makes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from okto.data.encode import IGNORE
from okto.language.config import DatasetConfig


def config(**fields) -> DatasetConfig:
    """A DATASET block as the language front end builds it."""
    return DatasetConfig.model_validate(fields)


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data, indent=2))
    return path


def write_csv(path: Path, records: list[dict], delimiter: str = ",") -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(records)
    return path


def write_parquet(path: Path, records: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def chat(*pairs: tuple[str, str]) -> dict:
    """A ShareGPT record from (role, text) pairs, roles as ShareGPT spells them."""
    return {"conversations": [{"from": r, "value": t} for r, t in pairs]}


def trained_runs(tokenizer, row) -> list[str]:
    """The decoded runs of consecutive tokens that carry labels in one row."""
    ids, labels = row["input_ids"].tolist(), row["labels"].tolist()
    runs, current = [], []
    for token, label in zip(ids, labels, strict=True):
        if label != IGNORE:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run) for run in runs]


def real_text(tokenizer, row) -> str:
    """The row's tokens without padding, decoded."""
    ids = row["input_ids"][row["attention_mask"].bool()].tolist()
    return tokenizer.decode(ids)
