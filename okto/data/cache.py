"""The tokenized-data cache, so a second run with the same data starts at once.

The key hashes the content of every data file, the tokenizer (its full
serialized form, chat template and special tokens), every DATASET setting, the
seed, and the code that makes rows (okto's data modules and the versions of
the libraries that tokenize and store them); any change gives a new entry.

An entry is a directory of `datasets` splits plus `entry.json`: the
statistics and every file's size. It is written under a temporary name and
renamed, so an interrupted write is never read; an entry that does not match
its `entry.json` (a file cut short, missing or unreadable) is a miss: it is
removed with a warning and rebuilt. Temporary directories an interrupted write
left behind are removed by a later write.

The cache is capped (`OKTO_DATA_CACHE_SIZE`, default 20 GB; `unlimited` turns the
cap off): once an entry is written or read, the least recently used others are
removed until the cache fits, never the entry in use. Reading an entry marks it
used (its `entry.json`'s modification time), so a dataset trained on every day
stays while last month's experiments go.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from importlib import metadata
from pathlib import Path

from okto.data.errors import DataError, DataWarning
from okto.data.progress import quiet_datasets
from okto.data.stats import DataStats

# Part of every key, the trained tokenizer's included: bump to invalidate them all.
DATA_VERSION = 1
ENTRY_FILE = "entry.json"
# Libraries whose version changes the rows (tokenizers, templates) or how they are stored.
ROW_LIBRARIES = ("tokenizers", "transformers", "datasets", "pyarrow")
# A temporary directory this old is an interrupted write's, not a running one's.
STALE_SECONDS = 3600
SIZE_VARIABLE = "OKTO_DATA_CACHE_SIZE"
DEFAULT_SIZE = "20GB"
UNLIMITED = "unlimited"


def make_key(parts: dict) -> str:
    blob = json.dumps({"version": DATA_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()


@functools.cache
def code_version() -> str:
    """A hash of okto's data modules and the row libraries' versions: rows cached by other
    code (an upgrade, an edit of an editable install) are never read as this code's."""
    digest = hashlib.blake2b(digest_size=16)
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    for library in ROW_LIBRARIES:
        digest.update(f"{library}=={metadata.version(library)}".encode())
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(tokenizer.backend_tokenizer.to_str().encode())
    # Templates see every special token (bos_token, eos_token, ...).
    extra = [type(tokenizer).__name__, tokenizer.chat_template, tokenizer.special_tokens_map]
    digest.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def load(cache_dir: Path, key: str) -> tuple[dict, DataStats, int] | None:
    """(splits by name, statistics, bytes) of a sound entry; None when there is none.

    A damaged entry is removed, with a warning, so the caller rebuilds it.
    """
    entry = cache_dir / key
    if not entry.exists():
        return None
    try:
        recorded = json.loads((entry / ENTRY_FILE).read_text())
        stats, sizes = DataStats.from_dict(recorded["stats"]), recorded["sizes"]
        _check_sizes(entry, sizes)
        with quiet_datasets():
            splits = {name: _load_split(entry, name) for name in recorded["splits"]}
        for name, split in splits.items():
            if split.num_rows != (examples := getattr(stats, name).examples):
                raise ValueError(f"{name} has {split.num_rows} rows, not {examples}")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:  # json, Arrow
        if not entry.exists():
            return None  # another run removed it meanwhile (evicted): a plain miss
        _discard(entry)
        warnings.warn(
            f"the cached data at {entry} was damaged ({_reason(error, entry)}); "
            "removed it and tokenizing again",
            DataWarning,
            stacklevel=3,
        )
        return None
    _mark_used(entry)
    return splits, stats, sum(sizes.values())


def _load_split(entry: Path, name: str):
    """A split saved with `save_to_disk`; a damaged JSON file of its own is named (json's
    error does not say which file it read)."""
    import datasets

    try:
        return datasets.load_from_disk(str(entry / name))
    except json.JSONDecodeError:
        broken = [p for p in sorted((entry / name).glob("*.json")) if not _parses(p)]
        where = broken[0].relative_to(entry) if broken else f"a JSON file of {name}"
        raise ValueError(f"{where} is not valid JSON") from None


def _parses(path: Path) -> bool:
    try:
        json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return True


def _mark_used(entry: Path) -> None:
    """Record that the entry was used now: eviction goes by this time."""
    with contextlib.suppress(OSError):  # a read-only cache, which no run here evicts either
        os.utime(entry / ENTRY_FILE)


def size_limit() -> int | None:
    """The cache's cap in bytes from OKTO_DATA_CACHE_SIZE (default 20 GB), None when it is
    `unlimited`; a value that is not a size is a DataError."""
    from okto.language.quantities import Quantity

    text = os.environ.get(SIZE_VARIABLE, "").strip() or DEFAULT_SIZE
    if text.lower() == UNLIMITED:
        return None
    try:
        size = Quantity.parse(text)
    except ValueError:
        size = None
    if size is None or size.kind != "size" or size.base < 0:
        raise DataError(
            f"{SIZE_VARIABLE}={text!r} is not a size: give one like 20GB, 500MB or 2GiB, "
            f"or {UNLIMITED!r} for no cap"
        )
    return int(size.base)


def evict(cache_dir: Path, keep: str, limit: int | None) -> list[tuple[str, int]]:
    """Remove the least recently used entries other than `keep` (the one in use) until the
    cache holds at most `limit` bytes; the (key, bytes) of each entry removed."""
    if limit is None:
        return []
    entries = []
    for entry in cache_dir.iterdir() if cache_dir.is_dir() else ():
        try:
            if entry.name.startswith(".") or not entry.is_dir():
                continue  # a write in progress, or one being removed
            used = (entry / ENTRY_FILE).stat().st_mtime
            entries.append((used, entry, sum(_sizes(entry).values())))
        except OSError:
            continue  # removed meanwhile, or an entry being written
    total = sum(size for _, _, size in entries)
    removed = []
    for _, entry, size in sorted(entries, key=lambda e: e[0]):
        if total <= limit:
            break
        if entry.name != keep and _discard(entry):
            removed.append((entry.name, size))
            total -= size
    return removed


def _check_sizes(entry: Path, sizes: dict[str, int]) -> None:
    for name, size in sizes.items():
        actual = (entry / name).stat().st_size
        if actual != size:
            raise ValueError(f"{name} has {actual:,} bytes, not {size:,}")


def _reason(error: Exception, entry: Path) -> str:
    if isinstance(error, FileNotFoundError) and error.filename:
        missing = Path(error.filename)
        return (
            f"{missing.relative_to(entry) if missing.is_relative_to(entry) else missing} is missing"
        )
    if isinstance(error, json.JSONDecodeError):  # a split's are named by `_load_split`
        return f"{ENTRY_FILE} is not valid JSON"
    if isinstance(error, KeyError):
        return f"{ENTRY_FILE} lacks {error}"
    return (str(error).splitlines() or [type(error).__name__])[0]


def save(cache_dir: Path, key: str, splits: dict, stats: dict) -> int:
    """Write an entry atomically and return its size in bytes (0 when it could not be
    written: a warning says why, and the run goes on). A concurrent writer of the same
    key wins harmlessly."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale(cache_dir)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cache_dir))
    except OSError as error:
        return _not_written(cache_dir, error)
    try:
        with quiet_datasets():
            for name, split in splits.items():
                split.save_to_disk(str(staging / name))
        recorded = {"splits": list(splits), "sizes": _sizes(staging), "stats": stats}
        (staging / ENTRY_FILE).write_text(json.dumps(recorded, indent=1))
        os.rename(staging, cache_dir / key)
    except OSError as error:
        if not (cache_dir / key / ENTRY_FILE).is_file():  # else another run wrote it first
            return _not_written(cache_dir, error)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sum(_sizes(cache_dir / key).values())


def _sizes(directory: Path) -> dict[str, int]:
    return {
        str(path.relative_to(directory)): path.stat().st_size
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != ENTRY_FILE
    }


def _not_written(cache_dir: Path, error: OSError) -> int:
    warnings.warn(
        f"could not write the data cache in {cache_dir} ({error.strerror or error}); "
        "the next run tokenizes again",
        DataWarning,
        stacklevel=3,
    )
    return 0


def _discard(entry: Path) -> bool:
    """Move an entry out of the way atomically, then delete it; False when another run
    moved it first. A run reading it memory-mapped keeps its open files."""
    trash = entry.with_name(f".{entry.name}-removed-{os.getpid()}-{time.time_ns()}")
    try:
        os.rename(entry, trash)
    except OSError:
        return False
    shutil.rmtree(trash, ignore_errors=True)
    return True


def _remove_stale(cache_dir: Path) -> None:
    """Delete temporary directories that interrupted writes (a killed run) left behind."""
    cutoff = time.time() - STALE_SECONDS
    for path in cache_dir.glob(".*"):
        try:
            if path.is_dir() and path.stat().st_mtime < cutoff:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue
