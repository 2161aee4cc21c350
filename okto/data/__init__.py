"""Training data: readers, field detection, chat templates, tokenization, packing, caching.

The trainer needs two calls:

    tokenizer = resolve_tokenizer(cfg, model_path=..., run_dir=...)
    splits = build_datasets(cfg, tokenizer, seed=..., cache_dir=...)

`cfg` is the DATASET config (read by attribute). See docs/data.md.
"""

from okto.data.errors import DataError, DataWarning
from okto.data.pipeline import DataSplits, build_datasets
from okto.data.stats import DataStats, FileStats, SplitStats
from okto.data.tokenizer import resolve_tokenizer, train_tokenizer

__all__ = [
    "DataError",
    "DataSplits",
    "DataStats",
    "DataWarning",
    "FileStats",
    "SplitStats",
    "build_datasets",
    "resolve_tokenizer",
    "train_tokenizer",
]
