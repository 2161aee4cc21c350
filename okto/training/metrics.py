"""The run's metrics as JSON lines, beside what the terminal shows.

One object per line, each with an `event`: `start` (the run's settings),
`step` (every `logging_steps`), `eval`, `test` (DATASET.test, once at the
end), `set` (a CONTROL rule, or on resume `--set` or the edited file, changed
a setting), `log` (CONTROL `LOG` lines), `save`, `nan` (a non-finite loss) and
`summary` (how the run ended, and its totals). A resumed run appends to the same file, so the file
tells the whole run; floats are written as JSON numbers. Every key an event
has is always there: a figure not measured (MFU on a CPU, the validation loss
of a run without validation data) or not finite (a NaN loss) is null. In a
job of several processes rank 0 writes it; the others hold a `MetricsFile`
without a path, which writes nothing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path


class MetricsFile:
    def __init__(self, path: Path | None, append: bool):
        self.path = path
        self._file = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a" if append else "w", encoding="utf-8")  # noqa: SIM115

    def write(self, event: str, **fields) -> None:
        if self._file is None:
            return
        record = {"event": event, **{k: _plain(v) for k, v in fields.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _plain(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_metrics(path: Path, event: str | None = None) -> list[dict]:
    """The records of a metrics file, optionally only those of one event."""
    records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [r for r in records if event is None or r["event"] == event]
