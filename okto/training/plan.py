"""The run's settings, as okto.planner resolved them, in the form the loop uses.

The planner owns the rules (precedence, what the machine allows, the source of
each value; docs/planner.md); this module only reads its `Plan`. CUDA graphs
come through torch.compile's reduce-overhead mode, which captures the
training step's kernels, so asking for them compiles the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class RunSettings:
    device: torch.device
    processes: int  # training processes (one per GPU)
    strategy: str  # ddp or fsdp, for more than one process
    precision: str  # the autocast dtype: fp32 means no autocast
    weights: str  # the parameters' dtype
    loss_scaling: bool  # fp16: a GradScaler
    optimizer_kernel: bool  # okto's AdamW kernel runs the update (else torch's optimizer)
    tf32: bool
    compile: bool
    cuda_graphs: bool
    memory_efficient: bool
    cudnn_benchmark: bool
    streams: int
    seed: int

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return None if self.precision == "fp32" else DTYPES[self.precision]

    @property
    def matmul_precision(self) -> str:
        """What the matmuls compute in, for MFU's peak: the autocast dtype, else the weights'
        own (bf16 weights without autocast compute in bf16)."""
        return self.precision if self.precision != "fp32" else self.weights

    @property
    def weights_dtype(self) -> torch.dtype:
        return DTYPES[self.weights]


def run_settings(plan) -> RunSettings:
    """Read a planner `Plan`'s settings."""
    value = {name: setting.value for name, setting in plan.settings.items()}
    return RunSettings(
        device=torch.device(value["device"]),
        processes=value["processes"],
        strategy=value["strategy"],
        precision=value["precision"],
        weights=value["weights"],
        loss_scaling=value["loss_scaling"],
        optimizer_kernel=value["optimizer"] == "okto",
        tf32=value["tf32"],
        compile=value["compile"],
        cuda_graphs=value["cuda_graphs"],
        memory_efficient=value["memory_efficient"],
        cudnn_benchmark=value["cudnn_benchmark"],
        streams=value["streams"],
        seed=value["seed"],
    )


def compiled(forward, settings: RunSettings):
    """What the loop calls: `forward` itself, or through torch.compile when the plan
    compiles, in reduce-overhead mode (CUDA graphs of the step) when it asks for graphs."""
    if not settings.compile:
        return forward
    return torch.compile(forward, mode="reduce-overhead" if settings.cuda_graphs else None)


def apply_switches(settings: RunSettings) -> None:
    """The process-wide switches a plan asks for: TF32 matmuls and cuDNN autotuning."""
    if settings.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = settings.tf32
        torch.backends.cudnn.allow_tf32 = settings.tf32
        torch.backends.cudnn.benchmark = settings.cudnn_benchmark
