"""The tokenized-data cache, so a second run with the same data starts at once.

The key hashes the content of every data file, the tokenizer (its full
serialized form, chat template and special tokens), every DATASET setting, the
seed and okto's data-format version; any change gives a new entry. An entry is
a directory of `datasets` splits plus `stats.json`, written under a temporary
name and renamed, so an interrupted write is never read.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from okto.data.progress import quiet_datasets

# Bump when the rows okto produces for the same input change.
DATA_VERSION = 1
STATS_FILE = "stats.json"


def make_key(parts: dict) -> str:
    blob = json.dumps({"version": DATA_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(tokenizer.backend_tokenizer.to_str().encode())
    extra = [
        type(tokenizer).__name__,
        tokenizer.chat_template,
        tokenizer.eos_token,
        tokenizer.pad_token,
    ]
    digest.update(json.dumps(extra, default=str).encode())
    return digest.hexdigest()


def load(cache_dir: Path, key: str):
    """(splits by name, stats dict) of a cached entry, or None."""
    import datasets

    entry = cache_dir / key
    if not (entry / STATS_FILE).is_file():
        return None
    stats = json.loads((entry / STATS_FILE).read_text())
    with quiet_datasets():
        splits = {
            path.name: datasets.load_from_disk(str(path))
            for path in entry.iterdir()
            if path.is_dir()
        }
    return splits, stats


def save(cache_dir: Path, key: str, splits: dict, stats: dict) -> None:
    """Write an entry atomically; a concurrent writer of the same key wins harmlessly."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cache_dir))
    try:
        with quiet_datasets():
            for name, split in splits.items():
                split.save_to_disk(str(staging / name))
        (staging / STATS_FILE).write_text(json.dumps(stats, indent=1))
        os.rename(staging, cache_dir / key)
    except OSError:
        if not (cache_dir / key / STATS_FILE).is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
