"""From a DATASET block to fixed-length training rows: read, select, tokenize, pack, cache.

`build_datasets` is what the trainer calls. Tokenizing is parallel twice over:
the Rust tokenizer encodes each batch on every core, and with more than two
CPUs and enough records `num_proc` worker processes share the batches too (at
most one per CPU, one per `RECORDS_PER_WORKER` records), since rendering
templates and building label masks is Python work. Workers tokenize on one
thread each, so the two kinds of parallelism do not oversubscribe the CPUs.
The finished splits are cached, keyed on the files' content, the tokenizer
and the settings (see `cache`).
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from okto.data import cache, memory
from okto.data.encode import Encoder
from okto.data.errors import DataError, warn
from okto.data.files import DataFiles
from okto.data.packing import NO_TRAINED_TOKENS, Tokens, to_rows
from okto.data.progress import stage
from okto.data.selection import hold_out, release_kept, shuffled, training_mix
from okto.data.settings import DataSettings
from okto.data.sources import read_files
from okto.data.stats import DataStats, SplitStats
from okto.data.templates import PLAIN_CHAT_TEMPLATE
from okto.data.tokenizer import check_tokenizer
from okto.errors import RunError
from okto.language.diagnostics import counted

if TYPE_CHECKING:
    import pyarrow as pa
    from datasets import Dataset

RECORDS_PER_WORKER = 2000
ENCODE_BATCH = 256
IN_FLIGHT = 2  # batches per worker submitted ahead of the one awaited


@dataclass
class DataSplits:
    """Fixed-length rows (torch format): input_ids, labels, attention_mask, position_ids."""

    train: Dataset
    validation: Dataset | None
    test: Dataset | None
    stats: DataStats


def build_datasets(
    cfg,
    tokenizer,
    *,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    base_dir: str | Path | None = None,
    max_length: int | None = None,
    num_proc: int | None = None,
) -> DataSplits:
    """Train, validation and test rows for a DATASET config.

    `base_dir` anchors relative paths (the `.okt` file's folder; default the
    working directory); `max_length` overrides the config's; `cache_dir=None`
    turns caching off; `num_proc=None` picks the worker count.
    """
    started = time.perf_counter()
    settings = DataSettings.from_config(cfg, max_length)
    files = DataFiles.resolve(settings, Path(base_dir or Path.cwd()))
    check_tokenizer(tokenizer)
    fingerprints = files.fingerprints()
    key = cache.make_key(
        {
            "settings": settings.as_key(),
            "files": fingerprints,
            "tokenizer": cache.tokenizer_fingerprint(tokenizer),
            "seed": seed,
            "code": cache.code_version(),
        }
    )
    if cache_dir is not None and (entry := cache.load(Path(cache_dir), key)) is not None:
        release_kept()
        splits, stats = entry[0], entry[1]
        for note in stats.warnings:
            warn(note, [])
        stats.cache_hit, stats.cache_bytes = True, entry[2]
        stats.cache_path = str(Path(cache_dir) / key)
        _trim_cache(Path(cache_dir), key)
        stats.seconds = {"total": time.perf_counter() - started}
        _keep_the_plain_template(tokenizer, stats)
        return _torch_format(splits, stats)

    stats = DataStats(cache_key=key)
    for note in files.notes:
        warn(note, stats.warnings)
    _report_shared_files(fingerprints, stats.warnings)
    stage("reading the data files")
    tables = _select(settings, files, seed, stats)
    memory.release()  # what reading, shuffling and splitting the records left
    stats.seconds["read"] = time.perf_counter() - started
    tokenize_started = time.perf_counter()
    splits = {}
    for name in list(tables):
        stage(f"tokenizing {tables[name].num_rows:,} {name} records")
        # Fingerprints given, not computed (datasets would hash every byte), and short:
        # datasets caps them at 64 characters.
        splits[name], split_stats = _rows(
            tables, name, tokenizer, settings, num_proc, f"{key[:20]}-{name}"
        )
        setattr(stats, name, split_stats)
        _report_cuts(name, split_stats, settings, stats.warnings)
    stats.seconds["tokenize"] = time.perf_counter() - tokenize_started
    _check_rows(splits, stats)
    if cache_dir is not None:
        stage("writing the rows to the cache")
        save_started = time.perf_counter()
        stats.cache_bytes = cache.save(Path(cache_dir), key, splits, stats.to_dict())
        stats.cache_path = str(Path(cache_dir) / key) if stats.cache_bytes else ""
        if stats.cache_bytes and (entry := cache.load(Path(cache_dir), key)) is not None:
            splits = entry[0]  # memory-mapped: the run holds no copy of the rows in memory
        _trim_cache(Path(cache_dir), key)
        stats.seconds["cache_write"] = time.perf_counter() - save_started
    stats.seconds["total"] = time.perf_counter() - started
    _keep_the_plain_template(tokenizer, stats)
    return _torch_format(splits, stats)


def _keep_the_plain_template(tokenizer, stats: DataStats) -> None:
    """Chat-like records on a tokenizer with no chat template were rendered with okto's plain
    one; the tokenizer takes it as its own, so the model the run saves chats (`okto chat`,
    INFERENCE mode chat) in the format it was trained on, not in "User:" lines."""
    splits = (stats.train, stats.validation, stats.test)
    if not getattr(tokenizer, "chat_template", None) and any(
        split is not None and split.templated for split in splits
    ):
        tokenizer.chat_template = PLAIN_CHAT_TEMPLATE


def _check_rows(splits: dict, stats: DataStats) -> None:
    """A split whose every record was dropped: an error for the training data and for data
    files, which the user named; held-out validation records go, with a warning."""
    for name in [name for name, split in splits.items() if not split.num_rows]:
        if name == "validation" and stats.validation_from != "file":
            del splits[name]
            stats.validation, stats.validation_from = None, "none"
            warn(
                "the validation records held out of the training data gave no rows (see the "
                "warnings): the run has no validation data",
                stats.warnings,
            )
            continue
        where = "training records" if name == "train" else f"records of the {name} file(s)"
        raise DataError(f"no {name} rows are left: all {where} were dropped (see the warnings)")


def _select(settings: DataSettings, files: DataFiles, seed: int, stats: DataStats) -> dict:
    """The records of each split, by name; sources, the mix and warnings go into `stats`."""
    notes = stats.warnings
    train, stats.mix = training_mix(settings, files.train, seed, stats.files, notes)
    if files.validation:
        validation = read_files(files.validation, settings, stats.files, notes)
        stats.validation_from = "file"
    else:
        train, validation = hold_out(train, seed)
        stats.validation_from = "split of the training data"
        if validation is None:
            stats.validation_from = "none"
            warn("the training data has a single record: no validation split", notes)
    tables = {"train": shuffled(train, seed) if settings.shuffle else train}
    if validation is not None:
        tables["validation"] = validation
    if files.test:
        tables["test"] = read_files(files.test, settings, stats.files, notes)
    return tables


def _trim_cache(cache_dir: Path, key: str) -> None:
    """Keep the cache under its cap, removing the least recently used entries but `key`'s,
    and say so (a warning of this run only: the entry's stored warnings are written)."""
    limit = cache.size_limit()
    removed = cache.evict(cache_dir, key, limit)
    if removed:
        freed = sum(size for _, size in removed)
        warn(
            f"the data cache {cache_dir} was over its {_bytes_text(limit)} cap "
            f"({cache.SIZE_VARIABLE}): removed the {len(removed)} least recently used "
            f"entr{'y' if len(removed) == 1 else 'ies'} ({_bytes_text(freed)}); a run that "
            "needs one again tokenizes again",
            [],
        )


def _bytes_text(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e7 else f"{size / 1e6:.2f} MB"


def _report_shared_files(fingerprints: dict, notes: list) -> None:
    """A validation or test file with a training file's content (the same file named
    twice, or a copy) measures memory, not generalization; two training files with the same
    content (copies: `DataFiles` refuses one file named twice) train their records twice.
    Say so."""
    training: dict[str, str] = {}
    for source in fingerprints["train"]:
        for path, digest in source:
            if digest in training:
                warn(
                    f"training files {training[digest]} and {path} hold the same data: "
                    "its records train twice",
                    notes,
                )
            training.setdefault(digest, path)
    for split in ("validation", "test"):
        for path, digest in fingerprints[split]:
            if digest in training:
                warn(
                    f"{split} file {path} holds the same data as training file "
                    f"{training[digest]}: its loss will not show overfitting",
                    notes,
                )


def _torch_format(splits: dict, stats: DataStats) -> DataSplits:
    def torch(name: str):
        return splits[name].with_format("torch") if name in splits else None

    return DataSplits(torch("train"), torch("validation"), torch("test"), stats)


def _rows(tables: dict, name: str, tokenizer, settings: DataSettings, num_proc, fingerprint):
    """Tokenize a split's records in parallel, then cut them into fixed-length rows. The
    split's table is taken out of `tables`, so that it is freed once tokenized."""
    import datasets
    import pyarrow.compute as pc

    records = tables.pop(name)
    count = records.num_rows
    templated = pc.sum(records.column("templated")).as_py() or 0
    tokens = Tokens()
    dropped: Counter[str] = Counter()
    special_text: Counter[str] = Counter()
    for batch, reasons, specials in _encoded(
        records, Encoder(tokenizer), num_proc or _workers(count)
    ):
        tokens.add(batch)
        dropped.update(reasons)
        special_text.update(specials)
    del records
    memory.release()  # the records' text
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    rows = to_rows(tokens, settings.max_length, pad_id, settings.packing)
    if rows.dropped:
        dropped[
            NO_TRAINED_TOKENS if not settings.packing else "packed rows without trained tokens"
        ] = rows.dropped
    stats = SplitStats(
        records=count,
        examples=len(rows.input_ids),
        tokens=int(rows.attention_mask.sum()),
        trained_tokens=rows.trained_tokens,
        truncated=rows.truncated,
        templated=templated,
        dropped=dict(dropped),
        special_text=dict(special_text),
    )
    return datasets.Dataset(rows.to_arrow(), fingerprint=f"{fingerprint}-rows"), stats


def _encoded(records: pa.Table, encoder: Encoder, workers: int) -> Iterator[tuple]:
    """The records' `Batch`es and drop reasons, in order, `ENCODE_BATCH` records at a time:
    here, or in `workers` processes with a few batches each in flight (a pool's `map`
    would convert every batch to Python at once)."""
    slices = (part.to_pydict() for part in records.to_batches(max_chunksize=ENCODE_BATCH))
    if workers <= 1:
        yield from map(encoder, slices)
        return
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    try:
        with ProcessPoolExecutor(
            workers,
            mp_context=_worker_context(encoder),
            initializer=_start_worker,
            initargs=(encoder,),
        ) as pool:
            pending: deque = deque()
            for part in slices:
                pending.append(pool.submit(_encode_in_worker, part))
                if len(pending) >= IN_FLIGHT * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
    except BrokenProcessPool:
        raise RunError(
            "a worker process tokenizing the data stopped abruptly (the system kills a "
            "process when memory runs out, for one; a script that calls build_datasets "
            "must do so under `if __name__ == \"__main__\":`, as Python's multiprocessing "
            "asks, since each worker imports the script)"
        ) from None


def _worker_context(encoder: Encoder):
    """Workers start from a fork server, not as forks of this process. A fork copies one
    thread of a process that may run others (the tokenizer's thread pool, a progress
    display, NCCL's): a lock one of them held stays held in the child. With
    TOKENIZERS_PARALLELISM=true, after the tokenizer had used its threads, a forked
    worker waited forever for the thread pool a fork does not copy. The server, a fresh
    process, imports what unpickling the encoder needs once; each worker is forked from it."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(encoder.imports)  # for the server's start, if not running
    return context


_worker_encoder: Encoder | None = None


def _start_worker(encoder: Encoder) -> None:
    """A worker encodes on one thread: N workers each running the tokenizer's N threads
    would oversubscribe the CPUs. `tokenizers` reads the variable at each call."""
    global _worker_encoder
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker_encoder = encoder


def _encode_in_worker(batch: dict[str, list]) -> tuple:
    return _worker_encoder(batch)


def _report_cuts(name: str, split: SplitStats, settings: DataSettings, notes: list) -> None:
    """One warning for what making the rows cut or dropped from a split, beside the
    reading's: records cut at max_length (without packing), rows with nothing to train;
    and special tokens' text in records, which did not become those tokens."""
    parts = []
    if split.special_text:
        held = ", ".join(
            f"{token} in {counted(count, 'record')}" for token, count in split.special_text.items()
        )
        parts.append(
            f"records hold the text of special tokens ({held}), tokenized as ordinary text, "
            "not as those tokens"
        )
    if split.truncated:
        parts.append(
            f"{split.truncated:,} of {split.records:,} records longer than max_length "
            f"({settings.max_length}) were cut"
        )
    parts += [f"{count:,} dropped ({reason})" for reason, count in split.dropped.items()]
    if parts:
        warn(f"{name} rows: " + "; ".join(parts), notes)


def _workers(records: int) -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if (cpus or 1) <= 2:
        return 1  # the tokenizer's own threads already use both cores
    return max(1, min(cpus, math.ceil(records / RECORDS_PER_WORKER)))
