"""Run as a script: build the rows of a generated text dataset in this fresh process and
print, as JSON, the peak resident memory the build added and the size of the rows.

Resident memory is what the operating system sees (allocator slack and freed memory that
was not handed back included), which `tracemalloc` does not.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from okto.data import build_datasets, train_tokenizer
from tests.data.conftest import WORDS


def _status(field: str) -> int:
    """A size from /proc/self/status, in bytes. The peak is read there (VmHWM), not from
    getrusage, whose maximum also covers the forked copy of the parent this process
    started as, and is not reset with it."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))


def main(folder: Path, records: int, words: int) -> None:
    rng = random.Random(0)
    tokenizer = train_tokenizer([" ".join(rng.choices(WORDS, k=40)) for _ in range(300)], 400)
    picks = np.random.default_rng(0).integers(0, len(WORDS), (records, words))
    path = folder / "text.jsonl"
    with open(path, "w") as f:
        for row in picks:
            f.write(json.dumps({"text": " ".join(WORDS[i] for i in row)}) + "\n")
    # A small build first, so that lazy imports are not counted.
    build_datasets(SimpleNamespace(train=str(path), dataset_percent=1), tokenizer)
    start = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak to the current resident size
    splits = build_datasets(SimpleNamespace(train=str(path), max_length=256), tokenizer)
    peak = _status("VmHWM") - start
    rows = sum(split.data.table.nbytes for split in (splits.train, splits.validation))
    print(json.dumps({"peak": peak, "rows": rows}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
