"""The run's plan: the settings the loop runs with, where each came from, and the model patches.

This is the one place the training runtime asks for a plan. It resolves the
device (TRAIN.device, then MODEL.device, then ENV.accelerator), the precision
(TRAIN, MODEL, then ENV; `auto` is bf16 on a GPU that has it, fp16 on one
that does not, fp32 on a CPU; TRAIN.mixed_precision asks for bf16/fp16),
TF32 (OPTIMIZE.tf32, or tf32 in BLAS or TENSOR_CORES), torch.compile, CUDA
graphs (through compile's reduce-overhead mode), activation checkpointing and
the CUDA streams for input copies, and checks ENV.min_memory. Every layer
runs the framework's implementation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from okto.errors import MachineError


@dataclass
class RunPlan:
    device: torch.device
    precision: str  # fp32, bf16 or fp16: the autocast dtype, fp32 = no autocast
    tf32: bool
    compile: bool
    cuda_graphs: bool
    memory_efficient: bool
    streams: int
    rows: list[tuple[str, str, str]] = field(default_factory=list)  # setting, value, from
    notes: list[str] = field(default_factory=list)


def make_plan(program, config) -> RunPlan:
    """Resolve the run's settings from a Program's config (already with command-line values)."""
    origin = _origins(program)
    device, device_from = _device(config)
    precision, precision_from = _precision(config, device)
    tf32_from = next(
        (
            name
            for name, on in (
                ("optimize.tf32", config.optimize.tf32),
                ("blas.precision", config.blas.precision == "tf32"),
                ("tensor_cores.precision", config.tensor_cores.precision == "tf32"),
            )
            if on
        ),
        None,
    )
    plan = RunPlan(
        device=device,
        precision=precision,
        tf32=tf32_from is not None and device.type == "cuda",
        compile=config.optimize.compile,
        cuda_graphs=config.optimize.cuda_graphs
        and config.optimize.compile
        and device.type == "cuda",
        memory_efficient=config.optimize.memory_efficient,
        streams=config.blas.streams,
    )
    if config.optimize.cuda_graphs and not plan.cuda_graphs:
        plan.notes.append(
            "OPTIMIZE.cuda_graphs needs a GPU and compile: true for training; it is off"
        )
    _check_memory(config, device)
    plan.rows = [
        ("device", str(device), origin(device_from)),
        ("precision", precision, origin(precision_from)),
        ("tf32", _on(plan.tf32), origin(tf32_from or "optimize.tf32")),
        ("torch.compile", _on(plan.compile), origin("optimize.compile")),
        ("cuda graphs", _on(plan.cuda_graphs), origin("optimize.cuda_graphs")),
        (
            "activation checkpointing",
            _on(plan.memory_efficient),
            origin("optimize.memory_efficient"),
        ),
        ("input copy streams", str(plan.streams), origin("blas.streams")),
        ("layers", "framework (PyTorch) implementations", "no okto kernels patched in"),
    ]
    return plan


def _on(value: bool) -> str:
    return "on" if value else "off"


def _origins(program):
    def origin(path: str | None) -> str:
        if path is None or path.startswith("auto"):
            return path or "default"
        return str(program.source_map.get(path, "default"))

    return origin


def _device(config) -> tuple[torch.device, str]:
    asked = [
        (path, value)
        for path, value in (
            ("train.device", config.train.device),
            ("model.device", config.model.device),
            ("env.accelerator", config.env.accelerator),
        )
        if value != "auto"
    ]
    if not asked:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu"), "auto: what is here"
    path, value = asked[0]
    if value == "cpu":
        return torch.device("cpu"), path
    if not torch.cuda.is_available():
        raise MachineError(f"{path.upper()} asks for a GPU ({value!r}), and this machine has none")
    index = int(value.partition(":")[2] or torch.cuda.current_device())
    if index >= torch.cuda.device_count():
        raise MachineError(
            f"{path.upper()} asks for GPU {index}; this machine has {torch.cuda.device_count()}"
        )
    return torch.device("cuda", index), path


def _precision(config, device: torch.device) -> tuple[str, str]:
    cuda = device.type == "cuda"
    bf16_ok = not cuda or torch.cuda.is_bf16_supported()
    for path, value in (
        ("train.precision", config.train.precision),
        ("model.precision", config.model.precision),
        ("env.precision", config.env.precision),
    ):
        if value != "auto":
            if value == "bf16" and not bf16_ok:
                raise MachineError(
                    f"{path.upper()} is bf16, which {torch.cuda.get_device_name(device)} lacks; use fp16"
                )
            return value, path
    if config.train.mixed_precision:
        return ("bf16" if bf16_ok else "fp16"), "train.mixed_precision"
    if not cuda:
        return "fp32", "auto: a CPU trains in fp32"
    return ("bf16" if bf16_ok else "fp16"), "auto: mixed precision on a GPU"


def _check_memory(config, device: torch.device) -> None:
    wanted = config.env.min_memory
    if wanted is None:
        return
    if device.type == "cuda":
        have, what = torch.cuda.get_device_properties(device).total_memory, "GPU"
    else:
        have, what = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "machine"
    if have < wanted.base:
        raise MachineError(
            f"ENV.min_memory is {wanted}, and this {what} has {have / 2**30:.1f} GiB"
        )
