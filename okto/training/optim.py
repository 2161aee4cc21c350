"""The optimizer and learning-rate schedule of TRAIN, and live learning-rate changes.

Weight decay applies to matrices (2-D and up) only: decaying biases and norm
gains hurts and is what nanoGPT and the Hugging Face Trainer avoid too. Adam and
AdamW run fused (one kernel over every parameter, on CUDA and on the CPU): the
step applies the gradient clipping and skips a non-finite update on the device.
Where the plan says so (AdamW, fp32 weights, a GPU; docs/planner.md), AdamW's
update runs okto's multi-tensor kernel instead of torch's, on the same state.
Schedules are `transformers.get_scheduler`'s, except `step`, which is not
there: linear warmup, then the rate times 0.1 at half and again at three
quarters of the steps after the warmup (the classic multi-step decay). TRAIN.num_cycles and
TRAIN.power give cosine_with_restarts its restarts and polynomial its curve;
polynomial decays to 0.
"""

from __future__ import annotations

import math

import torch
from torch import nn

STEP_DROPS = (0.5, 0.75)


class KernelAdamW(torch.optim.AdamW):
    """torch's fused AdamW with its update run by okto's multi-tensor kernel (`adamw_`).

    The state is torch's (fp32 `step` tensors on the device, `exp_avg`, `exp_avg_sq`),
    so checkpoints load into either class; `grad_scale` and `found_inf` work as in
    torch's fused step (clipping and loss scaling fold into it, a non-finite update is
    skipped on the device). Options the kernel lacks (amsgrad, maximize, a tensor
    learning rate) and tensors it does not take leave the step to torch's.
    """

    def __init__(self, params, lr: float, **kwargs):
        super().__init__(params, lr=lr, fused=True, **kwargs)

    @torch.no_grad()
    def step(self, closure=None):
        if not all(_kernel_takes(group) for group in self.param_groups):
            return super().step(closure)
        from okto.kernels.ops.adamw import adamw_

        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        for group in self.param_groups:
            tensors = self._tensors(group)
            adamw_(
                *tensors,
                lr=group["lr"],
                betas=group["betas"],
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                grad_scale=grad_scale,
                found_inf=found_inf,
            )
        return loss

    def _tensors(self, group) -> tuple[list[torch.Tensor], ...]:
        """(params, grads, exp_avgs, exp_avg_sqs, steps) of the group's parameters that
        have a gradient, their state made as torch's fused AdamW makes it."""
        lists: tuple[list[torch.Tensor], ...] = ([], [], [], [], [])
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = torch.tensor(0.0, dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            row = (p, p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"])
            for out, t in zip(lists, row, strict=True):
                out.append(t)
        return lists


def _kernel_takes(group) -> bool:
    return not (
        group["amsgrad"]
        or group["maximize"]
        or group["differentiable"]
        or isinstance(group["lr"], torch.Tensor)
    )


def build_optimizer(
    model: nn.Module, name: str, lr: float, weight_decay: float, kernel: bool = False
) -> torch.optim.Optimizer:
    """TRAIN's optimizer over the trained parameters; `kernel`: the plan put AdamW's update
    on okto's kernel."""
    trained = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trained if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in trained if p.ndim < 2], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if name == "adamw" and kernel:
        return KernelAdamW(groups, lr=lr)
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


def build_scheduler(
    optimizer,
    name: str,
    warmup_steps: int,
    total_steps: int,
    *,
    num_cycles: int | None = None,
    power: float | None = None,
):
    """A LambdaLR: the rate at step s is each group's base rate times a factor.
    `num_cycles` shapes cosine_with_restarts, `power` polynomial (TRAIN's fields; unset,
    transformers' 1 for each)."""
    if name == "step":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: _step_factor(step, warmup_steps, total_steps)
        )
    from transformers import get_scheduler

    if name == "constant" and warmup_steps:
        name = "constant_with_warmup"
    shape = {}
    if name == "cosine_with_restarts":
        shape = {"num_cycles": num_cycles or 1}
    elif name == "polynomial":
        # To 0, as linear and cosine go: transformers' default end of 1e-7 refuses any
        # learning rate at or below it, and makes the factor depend on the rate.
        shape = {"power": power or 1.0, "lr_end": 0.0}
    return get_scheduler(
        name,
        optimizer,
        num_warmup_steps=warmup_steps,
        num_training_steps=total_steps,
        scheduler_specific_kwargs=shape,
    )


def _step_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return step / warmup  # as transformers' schedules: the first step warms up from 0
    done = (step - warmup) / max(1, total - warmup)
    return 0.1 ** sum(done >= drop for drop in STEP_DROPS)


def reschedule(optimizer, scheduler) -> None:
    """Set the rate to the schedule's at its position. A checkpoint restores the rate its
    run's schedule had; after the schedule was remade for another length (a resume with
    other steps), the first resumed step would run at that old rate (0 at the end of a
    finished linear or cosine run)."""
    step = scheduler.last_epoch
    for group, base, factor in zip(
        optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
    ):
        group["lr"] = base * factor(step)


def current_lr(optimizer) -> float:
    return optimizer.param_groups[0]["lr"]


def set_lr(optimizer, scheduler, value: float) -> None:
    """Set the rate now; the schedule goes on from it (its base rates are rescaled)."""
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
        factor = group["lr"] / base if base else 0.0
        group["initial_lr"] = value / factor if factor > 0 else value
        group["lr"] = value
    scheduler.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
