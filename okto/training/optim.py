"""The optimizer and learning-rate schedule of TRAIN, and live learning-rate changes.

Weight decay applies to matrices (2-D and up) only: decaying biases and norm
gains hurts and is what nanoGPT and the Hugging Face Trainer avoid too. Adam and
AdamW run fused (one kernel over every parameter, on CUDA and on the CPU): the
step applies the gradient clipping and skips a non-finite update on the device.
Schedules are `transformers.get_scheduler`'s, except `step`, which is not
there: linear warmup, then the rate times 0.1 at half and again at three
quarters of the steps (the classic multi-step decay).
"""

from __future__ import annotations

import math

import torch
from torch import nn

STEP_DROPS = (0.5, 0.75)


def build_optimizer(
    model: nn.Module, name: str, lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    trained = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trained if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in trained if p.ndim < 2], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, fused=True)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9)
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr)
    if name == "adafactor":
        return torch.optim.Adafactor(groups, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}")


def folds_clipping(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer's own step can apply gradient clipping: fused Adam and
    AdamW divide every gradient by their `grad_scale` as they read it (what GradScaler
    uses to unscale), which saves clipping's separate read and write of every gradient."""
    return isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW) and all(
        group.get("fused") for group in optimizer.param_groups
    )


def clip_in_step(optimizer: torch.optim.Optimizer, params, max_norm: float) -> torch.Tensor:
    """The global norm of the parameters' gradients; the optimizer's next step clips them
    to `max_norm` (`clip_grad_norm_`'s factor min(1, max_norm / (norm + 1e-6)), applied as
    a divisor). For optimizers that `folds_clipping`."""
    norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    inf = max_norm == math.inf
    optimizer.grad_scale = None if inf else torch.clamp((norm.float() + 1e-6) / max_norm, min=1.0)
    return norm


def build_scheduler(optimizer, name: str, warmup_steps: int, total_steps: int):
    """A LambdaLR: the rate at step s is each group's base rate times a factor."""
    if name == "step":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: _step_factor(step, warmup_steps, total_steps)
        )
    from transformers import get_scheduler

    if name == "constant" and warmup_steps:
        name = "constant_with_warmup"
    return get_scheduler(
        name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps
    )


def _step_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return step / warmup  # as transformers' schedules: the first step warms up from 0
    done = (step - warmup) / max(1, total - warmup)
    return 0.1 ** sum(done >= drop for drop in STEP_DROPS)


def current_lr(optimizer) -> float:
    return optimizer.param_groups[0]["lr"]


def set_lr(optimizer, scheduler, value: float) -> None:
    """Set the rate now; the schedule goes on from it (its base rates are rescaled)."""
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
        factor = group["lr"] / base if base else 0.0
        group["initial_lr"] = value / factor if factor > 0 else value
        group["lr"] = value
    scheduler.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
