"""The training runtime: `okto.train("file.okt")` and `okto train -f file.okt`.

One concept per module: `run` (from a file to a trained model), `loop` (the
step and its events), `batches` (data order and prefetching), `models` and
`hub` (where the model comes from), `lora`, `optim`, `checkpoint`,
`control` (CONTROL rules), `stability` (NaN, divergence, plateaus), `flops`
(MFU), `plan` (resolved settings), `display`, `metrics`, `outputs` (the run
folder), `signals`; for several processes `distributed` (process group,
DDP/FSDP, collectives), `distributed_checkpoint` (DCP) and `launch`
(torchrun). See docs/training.md and docs/distributed.md.
"""

from __future__ import annotations

from okto.lazy import lazy_exports

_EXPORTS = {
    "train": "okto.training.run",
    "TrainResult": "okto.training.run",
    "TrainingFailed": "okto.training.run",
    "TrainingInterrupted": "okto.training.run",
}

__all__ = list(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
