"""The run's metrics as JSON lines, beside what the terminal shows.

One object per line, each with an `event`: `start` (the run's settings),
`step` (every `logging_steps`), `eval`, `test` (DATASET.test, once at the
end), `set` (a CONTROL rule, or on resume `--set` or the edited file, changed
a setting), `log` (CONTROL `LOG` lines), `save`, `nan` (a non-finite loss) and
`summary` (how the run ended, and its totals). A resumed run appends to the same file, so the file
tells the whole run, each step once: as its `start` (which names the checkpoint) is written,
the records the earlier run wrote after that checkpoint, which the resumed run writes again,
are dropped (see `MetricsFile.resume`). Floats are written as JSON numbers. Every key an event
has is always there: a figure not measured (MFU on a CPU, the validation loss
of a run without validation data) or not finite (a NaN loss) is null. In a
job of several processes rank 0 writes it; the others hold a `MetricsFile`
without a path, which writes nothing.
"""

from __future__ import annotations

import json
import math
import os
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
        if event == "start" and fields.get("resumed_from"):
            self.resume(Path(fields["resumed_from"]))
        record = {"event": event, **{k: _plain(v) for k, v in fields.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def resume(self, checkpoint: Path) -> None:
        """Cut the file back to `checkpoint`, which a run resumes from only once restored, so
        that a refused checkpoint leaves the file as it was. The file is rewritten under a
        temporary name and renamed, so a crash here leaves it whole, before or after."""
        from okto.training.checkpoint import read_trainer_state

        step = read_trainer_state(checkpoint)["step"]
        self._file.close()
        lines = self.path.read_text(encoding="utf-8").splitlines()
        kept = kept_until(lines, step)
        if len(kept) < len(lines):
            temporary = self.path.with_name(f".tmp-{self.path.name}-{os.getpid()}")
            try:
                with open(temporary, "w", encoding="utf-8") as file:
                    file.writelines(line + "\n" for line in kept)
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(temporary, self.path)
            finally:
                temporary.unlink(missing_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def kept_until(lines: list[str], step: int) -> list[str]:
    """The lines of a metrics file that a run resumed from the checkpoint of `step` keeps:
    those written up to that checkpoint's `save` (the last, if several), then of the lines
    after it only the `start`s and the `summary`s of sessions that ended at `step` (an
    interrupted one: how it ended). Anywhere, a record of a later step, and a `summary`
    counting steps past `step`, is dropped: the resumed run does those steps again; and a
    line that is no record (the last one, cut short by a crash)."""
    records = [_record(line) for line in lines]
    saved = [
        i
        for i, r in enumerate(records)
        if r.get("event") == "save" and r.get("what") == "checkpoint" and r.get("step") == step
    ]
    cut = saved[-1] + 1 if saved else len(lines)
    kept = []
    for i, (line, record) in enumerate(zip(lines, records, strict=True)):
        event = record.get("event")
        steps = record.get("steps" if event == "summary" else "step")
        beyond = isinstance(steps, int) and steps > step
        redone = i >= cut and event not in ("start", "summary")
        if record and not (beyond or redone):
            kept.append(line)
    return kept


def _record(line: str) -> dict:
    """A line's record; {} for a line that is none (cut short by a crash, or blank)."""
    try:
        record = json.loads(line)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _plain(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_metrics(path: Path, event: str | None = None) -> list[dict]:
    """The records of a metrics file, optionally only those of one event."""
    records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [r for r in records if event is None or r["event"] == event]
