"""Which records train, and in what order: dataset_percent, mix weights, validation split, shuffle.

All choices are seeded and each has its own random stream, so changing one
(say, the mix) does not reshuffle another.

- `dataset_percent` keeps that share of each source's records (at least one):
  a seeded random subset when `shuffle` is on, else the first ones.
- `mix_datasets` weights are sampling proportions over records. As with
  `datasets.interleave_datasets`' default, the mix stops when the first source
  runs out: no record repeats, so the largest mix with exactly these
  proportions is taken, and bigger sources are subsampled.
- Without a validation file, 1% of the training records (at least 1, at most
  1,000) are held out, chosen at random; a single record is not split.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pyarrow as pa

from okto.data import cache
from okto.data.errors import warn
from okto.data.files import source_fingerprints
from okto.data.settings import DataSettings, Source
from okto.data.sources import read_files
from okto.data.stats import FileStats

VALIDATION_SHARE = 0.01
VALIDATION_MAX = 1000
# Random streams, one per decision.
PERCENT, MIX, SPLIT, SHUFFLE, TOKENIZER_SAMPLE = range(5)


def rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream])


# Settings that do not change which training records are read and mixed.
NOT_READING = ("validation", "test", "max_length", "packing")
# The one training mix kept for the next `training_mix` call: (key, table, mix, stats, notes).
_kept: list[tuple] = []


def training_mix(
    settings: DataSettings,
    sources: list[tuple[Source, list[Path]]],
    seed: int,
    file_stats: list[FileStats],
    notes: list[str],
    *,
    keep: bool = False,
) -> tuple[pa.Table, list[dict]]:
    """The training records of every source, sampled to the mix weights; and what each gave.

    With `keep`, the result is also held for the next call with the same files
    (by content), settings and seed, which takes it instead of reading again,
    with the same file statistics and warnings: on a first run with
    `tokenizer: "train"` the tokenizer and then the rows need the same records.
    """
    key = cache.make_key(
        {
            "files": source_fingerprints(sources),
            "settings": {k: v for k, v in settings.as_key().items() if k not in NOT_READING},
            "seed": seed,
        }
    )
    if _kept and _kept[0][0] == key:
        _, table, mix, kept_stats, kept_notes = _kept.pop()
        file_stats.extend(copy.deepcopy(kept_stats))
        for note in kept_notes:
            warn(note, notes)
    else:
        _kept.clear()
        stats_before, notes_before = len(file_stats), len(notes)
        table, mix = _read_mix(settings, sources, seed, file_stats, notes)
        if keep:
            _kept.append(
                (key, table, mix, copy.deepcopy(file_stats[stats_before:]), notes[notes_before:])
            )
    return table, copy.deepcopy(mix)


def release_kept() -> None:
    """Drop the held training mix: a build that hits the cache never takes it, and a
    large dataset's records would otherwise stay in memory for the whole run."""
    _kept.clear()


def _read_mix(settings, sources, seed: int, file_stats, notes) -> tuple[pa.Table, list[dict]]:
    tables = [
        _percent(read_files(files, settings, file_stats, notes), settings, rng(seed, PERCENT))
        for _, files in sources
    ]
    if len(tables) > 1:
        available = [table.num_rows for table in tables]
        tables = _mix(tables, [s.weight for s, _ in sources], rng(seed, MIX))
        _report_unused(sources, available, [table.num_rows for table in tables], notes)
    mix = [
        {"paths": list(source.paths), "weight": source.weight, "records": table.num_rows}
        for (source, _), table in zip(sources, tables, strict=True)
    ]
    return pa.concat_tables(tables), mix


def _percent(table: pa.Table, settings: DataSettings, generator: np.random.Generator) -> pa.Table:
    if settings.percent >= 100:
        return table
    keep = max(1, math.ceil(table.num_rows * settings.percent / 100))
    if not settings.shuffle:
        return table.slice(0, keep)
    return table.take(np.sort(generator.choice(table.num_rows, keep, replace=False)))


def _report_unused(sources, available: list[int], taken: list[int], notes: list[str]) -> None:
    """The weights hold by leaving records of the larger sources out: say how many, when
    that is most of one (a one-record source at 50% keeps one record of each)."""
    left = [
        f"{source.paths[0]}: {kept:,} of {count:,}"
        for (source, _), count, kept in zip(sources, available, taken, strict=True)
        if kept < count / 2
    ]
    if left:
        warn(
            "mix_datasets keeps its weights by taking fewer records from the larger sources: "
            + "; ".join(left)
            + " (the smallest source against its weight sets the size)",
            notes,
        )


def _mix(tables: list[pa.Table], weights: list[float], generator) -> list[pa.Table]:
    shares = np.asarray(weights) / sum(weights)
    total = min(t.num_rows / s for t, s in zip(tables, shares, strict=True))
    counts = [max(1, math.floor(s * total + 1e-9)) for s in shares]
    return [
        table.take(np.sort(generator.choice(table.num_rows, count, replace=False)))
        for table, count in zip(tables, counts, strict=True)
    ]


def hold_out(table: pa.Table, seed: int) -> tuple[pa.Table, pa.Table | None]:
    """(train, validation) split of the training records, validation None when too few."""
    if table.num_rows < 2:
        return table, None
    count = min(VALIDATION_MAX, max(1, round(table.num_rows * VALIDATION_SHARE)))
    chosen = np.zeros(table.num_rows, dtype=bool)
    chosen[rng(seed, SPLIT).choice(table.num_rows, count, replace=False)] = True
    return table.filter(pa.array(~chosen)), table.filter(pa.array(chosen))


def shuffled(table: pa.Table, seed: int) -> pa.Table:
    return table.take(rng(seed, SHUFFLE).permutation(table.num_rows))
