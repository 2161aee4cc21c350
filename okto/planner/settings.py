"""Resolution of the run-wide settings: device, training processes and how they share
the model, precision, TF32, fused epilogues, compile, CUDA graphs, activation
checkpointing, streams, seed and memory.

Precedence is the spec's: the command line (it rewrites the field, so its
origin says "command line"), then the most specific block, then defaults. A
setting the machine cannot honour is a `MachineError` when the file demands
it outright (a GPU, fp16 or bf16 math, memory), and a note when it only tunes
speed (TF32, CUDA graphs, streams): a file tuned for a GPU should still run
on a laptop. docs/planner.md lists every rule.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from okto.errors import MachineError, UsageError
from okto.language.config import training_refusals
from okto.planner.machine import Gpu, Machine
from okto.planner.sources import DEFAULT, Sources, display

HALF = ("fp16", "bf16")
CALLER = "caller"
DEFAULT_SEED = 0  # an unseeded run still seeds: every run is reproducible
LAUNCHER = "torchrun"
TF32_DATA = "fp32 data, TF32 matmuls"  # BLAS.precision: tf32, while TF32 is on
MACHINE = "this machine"  # the origin of what was measured, not written or defaulted
STRATEGIES = {
    "ddp": "a full replica per process; gradients all-reduced in buckets during the backward",
    "fsdp": "parameters, gradients and optimizer state sharded per transformer block (FSDP2)",
}


@dataclass(frozen=True)
class Setting:
    """A resolved value, the field that decided it (None: the machine or a default did),
    that field's origin, and why, when the value is not simply as written."""

    value: Any
    field: str | None = None
    origin: str = DEFAULT
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "field": display(self.field) if self.field else None,
            "origin": self.origin,
            "reason": self.reason,
        }


def from_field(sources: Sources, path: str, reason: str = "", value: Any = None) -> Setting:
    """The setting a field decides: its value (or `value`), its path and origin."""
    return Setting(
        sources.value(path) if value is None else value, path, sources.origin(path), reason
    )


def resolve_settings(
    sources: Sources, machine: Machine, device: str | None = None
) -> tuple[dict[str, Setting], list[str]]:
    """(settings by name, notes); raises MachineError for what the machine cannot do."""
    notes: list[str] = []
    _check_trainable(sources)
    dev = _device(sources, machine, device)
    gpu = machine.gpus[int(dev.value.partition(":")[2])] if dev.value != "cpu" else None
    precision = _precision(sources, gpu, notes)
    weights = _weights(sources, precision, gpu)
    if precision.value == "fp32" and weights.value in HALF:
        precision = _half_weights_math(sources, precision, weights.value, notes)
    processes = _processes(sources, machine, dev, notes)
    cuda_graphs = _cuda_graphs(sources, gpu, processes, notes)
    tf32 = _tf32(sources, gpu, precision.value, notes)
    if precision.reason == TF32_DATA and not tf32.value:
        # BLAS.precision: tf32 set the fp32 math, but TF32 itself is off (see its row)
        why = tf32.reason or display(tf32.field)
        precision = replace(precision, reason=f"fp32 data; TF32 off ({why})")
    settings = {
        "device": dev,
        "processes": processes,
        "strategy": _strategy(sources, processes, precision, notes),
        "precision": precision,
        "weights": weights,
        "loss_scaling": Setting(
            precision.value == "fp16",
            precision.field,
            precision.origin,
            "fp16 gradients underflow without it" if precision.value == "fp16" else "",
        ),
        "tf32": tf32,
        "fused_ops": from_field(
            sources,
            "accelerate.fused_ops",
            "GELU in the MLP's first GEMM; LM head + loss as one op"
            if sources.config.accelerate.fused_ops
            else "GELU after its GEMM; the logits materialised for the loss",
        ),
        "compile": _compile(sources, cuda_graphs),
        "cuda_graphs": cuda_graphs,
        "memory_efficient": from_field(
            sources, "optimize.memory_efficient", "activation checkpointing"
        ),
        "cudnn_benchmark": _gpu_switch(sources, "optimize.cudnn_benchmark", gpu, notes),
        "streams": _streams(sources, gpu, notes),
        "seed": _seed(sources),
        "memory": _memory(sources, machine, dev.value, gpu, notes),
    }
    _mismatches(sources, precision, notes)
    _no_effect(sources, precision.value, gpu, tf32.value, notes)
    _platform(sources, machine, notes)
    return settings, notes


def _platform(sources: Sources, machine: Machine, notes: list[str]) -> None:
    """ENV.platform names the operating system the project was written for: a warning, not
    an error, when this is another one (paths and data may still work)."""
    expected = sources.config.env.platform
    if expected != "any" and expected != machine.platform:
        notes.append(
            f"{sources.where('env.platform')}: the project expects {expected}; "
            f"this machine runs {machine.platform}"
        )


def _device(sources: Sources, machine: Machine, device: str | None) -> Setting:
    """TRAIN.device over MODEL.device over ENV.accelerator; `auto` takes a GPU when there is one."""
    if device is not None:
        return _check_device(
            Setting(_canonical(device), None, CALLER), "the device argument", None, machine
        )
    for path in ("train.device", "model.device", "env.accelerator"):
        value = sources.value(path)
        if value != "auto":
            return _check_device(
                from_field(sources, path, value=_canonical(value)),
                sources.where(path),
                path,
                machine,
            )
    if machine.cuda:
        return Setting("cuda:0", reason=f"auto: {machine.gpus[0].name}")
    return Setting("cpu", reason="auto: no CUDA GPU" + _cpu_build(machine))


def _canonical(device: str) -> str:
    device = device.strip().lower()
    return "cuda:0" if device in ("gpu", "cuda") else device


def _cpu_build(machine: Machine) -> str:
    return "" if machine.cuda_build else " (this torch is a CPU-only build)"


def _check_device(setting: Setting, where: str, path: str | None, machine: Machine) -> Setting:
    if setting.value == "cpu":
        return setting
    fix = f"; use auto or cpu there (--set {display(path)}=cpu)" if path else ""
    if not machine.cuda:
        raise MachineError(
            f"{where} asks for a CUDA GPU, but this machine has none{_cpu_build(machine)}{fix}"
        )
    index = int(setting.value.partition(":")[2])
    if index >= len(machine.gpus):
        raise MachineError(
            f"{where} asks for {setting.value}, but this machine has {len(machine.gpus)} GPU(s): "
            f"cuda:0 to cuda:{len(machine.gpus) - 1}"
        )
    return replace(setting, reason=setting.reason or machine.gpus[index].name)


def _processes(sources: Sources, machine: Machine, device: Setting, notes: list[str]) -> Setting:
    """ENV.gpus, or the processes torchrun started (it decides when it is the launcher).

    One process per GPU; on the CPU only when the device is cpu on purpose (gloo, a
    test set-up), since `auto` finding no GPU is more likely a mistake than a wish.
    """
    path = "env.gpus"
    asked = sources.value(path)
    if machine.world is not None:
        local = machine.local_world or machine.world
        if asked is not None and asked != local:
            notes.append(
                f"{sources.where(path)} is {asked}, but torchrun started {local} process(es) "
                "on this node; the launcher's count holds"
            )
        setting = Setting(
            machine.world, None, LAUNCHER, f"started by torchrun, {local} on this node"
        )
        count = local
    elif asked is None:
        return Setting(1, reason="one process")
    else:
        setting = from_field(sources, path)
        count = asked
    if count == 1 and machine.world is None:
        return setting
    where = sources.where(path) if machine.world is None else "torchrun"
    if device.value == "cpu":
        if device.origin == DEFAULT and machine.world is None:
            raise MachineError(
                f"{where} asks for {count} GPUs, but this machine has none{_cpu_build(machine)}; "
                f"to train {count} processes on the CPU (gloo), set the device to cpu "
                f"(--set TRAIN.device=cpu)"
            )
        return replace(setting, reason=f"{setting.reason}; CPU processes (gloo)".lstrip("; "))
    if device.field is not None and ":" in str(sources.value(device.field)):
        raise UsageError(
            f"{sources.where(device.field)} names one GPU, but each of the {count} processes "
            f"takes its own (cuda:0 to cuda:{count - 1}): set it to gpu or auto"
        )
    if count > len(machine.gpus):
        raise MachineError(
            f"{where} asks for {count} processes, one per GPU, but this machine has "
            f"{len(machine.gpus)} GPU(s)"
        )
    gpus = f"one per GPU, cuda:0 to cuda:{count - 1}"
    return replace(setting, reason=f"{setting.reason}; {gpus}".lstrip("; "))


def _strategy(
    sources: Sources, processes: Setting, precision: Setting, notes: list[str]
) -> Setting:
    """TRAIN.strategy: ddp or fsdp, for more than one process."""
    path = "train.strategy"
    value = sources.value(path)
    if processes.value == 1:
        if sources.is_set(path):
            notes.append(f"{sources.where(path)}: one process, nothing to share; no effect")
        return from_field(sources, path, "one process: no effect")
    if value == "fsdp" and precision.value == "fp16":
        raise UsageError(
            f"{sources.where(path)} is fsdp, which trains in bf16 or fp32 here: fp16 needs "
            "loss scaling, which okto does not run on sharded gradients; use bf16, or "
            "strategy ddp"
        )
    if value == "fsdp" and sources.config.model.adapter is not None:
        raise UsageError(
            f"{sources.where(path)} is fsdp, but LoRA (MODEL.ADAPTER) trains with ddp here: "
            "the frozen base is replicated and only the adapters' gradients are all-reduced"
        )
    return from_field(sources, path, STRATEGIES[value])


def _precision(sources: Sources, gpu: Gpu | None, notes: list[str]) -> Setting:
    """The math's precision: TRAIN.precision, TRAIN.mixed_precision (true or false, when
    written), ENV, MODEL, BLAS, auto."""
    config = sources.config
    if config.train.precision != "auto":
        setting = from_field(sources, "train.precision")
    elif config.train.mixed_precision:
        setting = _mixed(sources, gpu, notes)
    elif sources.is_set("train.mixed_precision"):
        setting = _unmixed(sources)
    elif config.env.precision != "auto":
        setting = from_field(sources, "env.precision")
    elif config.model.precision != "auto":
        setting = from_field(sources, "model.precision", "the weights' precision")
    elif config.blas.precision != "auto":
        tf32 = config.blas.precision == "tf32"
        setting = from_field(
            sources,
            "blas.precision",
            TF32_DATA if tf32 else "",
            "fp32" if tf32 else None,
        )
    elif gpu is not None and gpu.bf16:
        setting = Setting("bf16", reason=f"auto: bf16 autocast on {gpu.name}")
    else:
        setting = Setting("fp32", reason=f"auto: {gpu.name} lacks bf16" if gpu else "auto: CPU")
    return _check_half(setting, sources, gpu)


def _mixed(sources: Sources, gpu: Gpu | None, notes: list[str]) -> Setting:
    """TRAIN.mixed_precision: true picks ENV's half type, else the GPU's best; fp32 on a CPU."""
    if sources.config.env.precision in HALF:
        return from_field(sources, "env.precision", "mixed precision in ENV's half type")
    if gpu is None:
        notes.append(
            f"{sources.where('train.mixed_precision')}: mixed precision is for GPUs; "
            "the CPU trains in fp32"
        )
        return from_field(sources, "train.mixed_precision", "fp32 on the CPU", "fp32")
    half = "bf16" if gpu.bf16 else "fp16"
    has = "has" if gpu.bf16 else "lacks"
    return from_field(
        sources, "train.mixed_precision", f"mixed precision: {gpu.name} {has} bf16", half
    )


def _unmixed(sources: Sources) -> Setting:
    """TRAIN.mixed_precision: false, as written: no autocast, the math in the weights'
    precision (fp32 unless MODEL.precision names a half type). It overrides ENV.precision
    and a GPU's bf16 default, as TRAIN overrides ENV."""
    weights = sources.config.model.precision
    if weights != "auto":
        return from_field(
            sources, "model.precision", "mixed_precision: false; the weights' precision"
        )
    return from_field(sources, "train.mixed_precision", "no mixed precision: fp32 math", "fp32")


def _check_half(setting: Setting, sources: Sources, gpu: Gpu | None) -> Setting:
    """fp16 math needs a GPU; bf16 needs Ampere or newer there (a CPU emulates bf16)."""
    where = sources.where(setting.field) if setting.field else "the precision"
    if setting.value == "fp16" and gpu is None:
        raise MachineError(
            f"{where} is fp16, which needs a CUDA GPU; on the CPU use bf16 or fp32 "
            f"(--set {display(setting.field or 'train.precision')}=fp32)"
        )
    if setting.value == "bf16" and gpu is not None and not gpu.bf16:
        raise MachineError(
            f"{where} is bf16, but {gpu.name} (sm_{gpu.capability[0]}{gpu.capability[1]}) "
            "has no bf16; use fp16"
        )
    return setting


def _check_trainable(sources: Sources) -> None:
    """Refuse what no machine would train (okto check says the same, from the same rule)."""
    for path, problem in training_refusals(sources.config):
        raise UsageError(f"{sources.where(path)} {problem}")


def _weights(sources: Sources, precision: Setting, gpu: Gpu | None) -> Setting:
    """MODEL.precision, or fp32 master weights under mixed precision."""
    if sources.config.model.precision != "auto":
        return _check_half(from_field(sources, "model.precision"), sources, gpu)
    mixed = precision.value != "fp32"
    return Setting("fp32", reason=f"fp32 master weights, {precision.value} math" if mixed else "")


def _half_weights_math(
    sources: Sources, precision: Setting, weights: str, notes: list[str]
) -> Setting:
    """fp32 math asked over half-precision weights: without autocast the weights' own dtype
    does the math, so the row says so (it read fp32 over bf16 matmuls)."""
    decided = f" ({sources.where(precision.field)})" if precision.field else ""
    notes.append(
        f"the precision is fp32{decided}, but {sources.where('model.precision')} makes the "
        f"weights {weights}: without autocast their matmuls run in {weights} (MODEL.precision: "
        "fp32 for fp32 math)"
    )
    return replace(precision, reason=f"no autocast: the {weights} weights compute in {weights}")


def _tf32(sources: Sources, gpu: Gpu | None, precision: str, notes: list[str]) -> Setting:
    """OPTIMIZE.tf32 over TENSOR_CORES (enabled, precision) over BLAS.precision; off by default.
    A field that asked the opposite of what runs gets a note: it was overruled, not ignored."""
    asked = _tf32_asked(sources)
    if not asked:
        return Setting(False, reason="PyTorch's default")
    path, wanted = asked[0]
    off = "tensor cores off" if path == "tensor_cores.enabled" else ""
    setting = from_field(sources, path, off, wanted)
    if wanted and (gpu is None or not gpu.bf16):
        lacks = "the CPU has no TF32" if gpu is None else f"{gpu.name} has no TF32"
        notes.append(f"{sources.where(path)}: {lacks}; off")
        setting = replace(setting, value=False, reason=lacks)
    elif wanted and precision != "fp32":
        setting = replace(setting, reason=f"for the fp32 matmuls outside {precision} autocast")
    for other, wish in asked[1:]:
        if wish not in (wanted, setting.value):
            notes.append(
                f"{sources.where(other)} is {_written(sources.value(other))}, but "
                f"{sources.where(path)} comes first: TF32 {'on' if setting.value else 'off'}"
            )
    return setting


def _tf32_asked(sources: Sources) -> list[tuple[str, bool]]:
    """The fields that speak about TF32, first the one that decides, each with its wish."""
    config = sources.config
    asked = []
    if sources.is_set("optimize.tf32"):
        asked.append(("optimize.tf32", config.optimize.tf32))
    if sources.is_set("tensor_cores.enabled") and not config.tensor_cores.enabled:
        asked.append(("tensor_cores.enabled", False))
    if config.tensor_cores.precision == "tf32":
        asked.append(("tensor_cores.precision", True))
    if config.blas.precision == "tf32":
        asked.append(("blas.precision", True))
    return asked


def _written(value: Any) -> str:
    """A value as a .okt file writes it (booleans in lower case)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _gpu_switch(sources: Sources, path: str, gpu: Gpu | None, notes: list[str]) -> Setting:
    """A switch only a CUDA device has: on a CPU it is off, with a note."""
    setting = from_field(sources, path)
    if setting.value and gpu is None:
        notes.append(f"{sources.where(path)}: needs a CUDA GPU; off on the CPU")
        return replace(setting, value=False, reason="needs a CUDA GPU")
    return setting


def _cuda_graphs(
    sources: Sources, gpu: Gpu | None, processes: Setting, notes: list[str]
) -> Setting:
    """OPTIMIZE.cuda_graphs, for one process: captured graphs and the collectives of DDP's
    and FSDP's hooks have not been checked together here, and the switch only tunes speed."""
    setting = _gpu_switch(sources, "optimize.cuda_graphs", gpu, notes)
    if setting.value and processes.value > 1:
        notes.append(
            f"{sources.where('optimize.cuda_graphs')}: not with {processes.value} processes "
            "(okto captures CUDA graphs in one process only); off"
        )
        return replace(setting, value=False, reason="several processes")
    return setting


def _compile(sources: Sources, cuda_graphs: Setting) -> Setting:
    """OPTIMIZE.compile; on whenever CUDA graphs are, as okto captures them through
    torch.compile's reduce-overhead mode (so the layer choices for a compiled step apply)."""
    setting = from_field(sources, "optimize.compile")
    if cuda_graphs.value and not setting.value:
        reason = "OPTIMIZE.cuda_graphs: graphs are captured through torch.compile"
        return Setting(True, cuda_graphs.field, cuda_graphs.origin, reason)
    return setting


def _streams(sources: Sources, gpu: Gpu | None, notes: list[str]) -> Setting:
    setting = from_field(sources, "blas.streams", "CUDA streams for overlapping work")
    if setting.value > 1 and gpu is None:
        notes.append(f"{sources.where('blas.streams')}: CUDA streams need a GPU; 1 on the CPU")
        return replace(setting, value=1, reason="CUDA streams need a GPU")
    return setting


def _seed(sources: Sources) -> Setting:
    for path in ("train.seed", "env.seed"):
        if sources.value(path) is not None:
            return from_field(sources, path)
    return Setting(DEFAULT_SEED, reason="default: runs are reproducible")


def _memory(
    sources: Sources, machine: Machine, device: str, gpu: Gpu | None, notes: list[str]
) -> Setting:
    """The device's memory, checked against ENV.min_memory."""
    total = gpu.memory_bytes if gpu else machine.cpu_memory_bytes
    name = gpu.name if gpu else "the CPU's RAM"
    shown = f"{total / 1e9:.1f} GB" if total is not None else None
    need = sources.config.env.min_memory
    if need is None:
        return Setting(shown, None, MACHINE, name)
    where = sources.where("env.min_memory")
    if total is None:
        notes.append(f"{where}: cannot read {device}'s memory; not checked")
        return from_field(sources, "env.min_memory", "not checked", "unknown")
    if total < need.base:
        raise MachineError(f"{where} asks for {need}, but {device} ({name}) has {shown}")
    return from_field(sources, "env.min_memory", f"{name}; at least {need} asked", shown)


def _mismatches(sources: Sources, precision: Setting, notes: list[str]) -> None:
    """BLAS.precision and TENSOR_CORES.precision yield to the training precision; say so."""
    for path in ("blas.precision", "tensor_cores.precision"):
        value = sources.value(path)
        if value in ("fp32", *HALF) and value != precision.value and precision.field != path:
            decided = sources.where(precision.field) if precision.field else "auto"
            notes.append(
                f"{sources.where(path)} is {value}, but the training precision is "
                f"{precision.value} ({decided}); matmuls run in {precision.value}"
            )
        elif value == "fp8":
            notes.append(f"{sources.where(path)}: fp8 training is not supported; ignored")


def _no_effect(
    sources: Sources, precision: str, gpu: Gpu | None, tf32: bool, notes: list[str]
) -> None:
    """Fields okto accepts but cannot act on, each said once."""
    config = sources.config
    if config.blas.kernel != "auto":
        notes.append(
            f"{sources.where('blas.kernel')}: okto has no named kernel configurations; "
            "the kernels autotune their tiles"
        )
    if sources.is_set("blas.autotune") and not config.blas.autotune:
        notes.append(
            f"{sources.where('blas.autotune')}: okto's GPU kernels always autotune "
            "(once per shape, cached on disk)"
        )
    if config.tensor_cores.min_matrix_size:
        notes.append(f"{sources.where('tensor_cores.min_matrix_size')}: no effect here")
    for path in ("metrics", "output.metrics"):
        if gpu is None and "gpu_memory" in sources.value(path):
            notes.append(f"{sources.where(path)}: gpu_memory is read from a GPU; none on the CPU")
    if gpu is not None and not config.tensor_cores.enabled and precision in HALF and not tf32:
        notes.append(
            f"{sources.where('tensor_cores.enabled')}: {precision} matmuls use tensor cores "
            "regardless; only TF32 is turned off"
        )
