"""The training runtime: `okto.train("file.okt")` and `okto train -f file.okt`.

One concept per module: `run` (from a file to a trained model), `loop` (the
step and its events), `batches` (data order and prefetching), `models` and
`hub` (where the model comes from), `lora`, `optim`, `checkpoint`,
`control` (CONTROL rules), `stability` (NaN, divergence, plateaus), `flops`
(MFU), `plan` (resolved settings), `display`, `metrics`, `outputs` (the run
folder), `signals`. See docs/training.md.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "train": "okto.training.run",
    "TrainResult": "okto.training.run",
    "TrainingFailed": "okto.training.run",
    "TrainingInterrupted": "okto.training.run",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'okto.training' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
