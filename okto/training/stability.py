"""STABILITY and early stopping: when a run has gone wrong, or stopped getting better.

- NaN: a step whose loss (or, outside fp16 loss scaling, gradient norm) is
  NaN or infinite. Its update is never applied, so the weights stay those of
  the last good step.
- Divergence (`stop_if_diverges`): the loss's moving average (weight `EMA`)
  rose above `FACTOR` times the lowest it has been since the first step, checked
  from step `WARMUP + 1` on. A single noisy step does not trip it; a run that
  blew up does, also when it blew up in its first steps.
- Plateau: `patience` evaluations in a row without the validation loss
  dropping below its best by more than `min_improvement`. The first
  evaluation sets the best, so a run needs `patience + 1` of them for a
  plateau to be seen (`planned_evaluations` counts a run's).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

EMA = 0.1
FACTOR = 1.5
WARMUP = 10


@dataclass
class LossGuard:
    steps: int = 0
    average: float | None = None
    lowest: float = math.inf

    def diverged(self, loss: float) -> bool:
        """Record a finite step loss; True when the run diverged."""
        self.steps += 1
        self.average = loss if self.average is None else (1 - EMA) * self.average + EMA * loss
        self.lowest = min(self.lowest, self.average)
        return self.steps > WARMUP and self.average > FACTOR * self.lowest

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        self.__init__(**state)


@dataclass
class Plateau:
    patience: int
    min_improvement: float = 0.0
    best: float = math.inf
    stale: int = 0  # evaluations since the best

    def update(self, val_loss: float) -> bool:
        """Record an evaluation; True when `patience` of them in a row brought nothing."""
        if val_loss < self.best - self.min_improvement:
            self.best, self.stale = val_loss, 0
            return False
        self.stale += 1
        if self.stale >= self.patience:
            self.stale = 0
            return True
        return False

    def state_dict(self) -> dict:
        return {"best": self.best, "stale": self.stale}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.stale = state["best"], state["stale"]


def planned_evaluations(total: int, per_step: int, rows: int, eval_steps: int | None) -> int:
    """Evaluations a run of `total` steps makes with the values it starts with: every
    `eval_steps`, else at each step that ends an epoch (`per_step` rows a step, out of
    `rows`), and one at the end unless its last step made one."""
    if eval_steps is not None:
        return total // eval_steps + (total % eval_steps != 0)
    ending = (total * per_step) // rows if per_step <= rows else total  # one a step at most
    ends_epoch = (total * per_step) // rows > ((total - 1) * per_step) // rows
    return ending + (not ends_epoch)
