"""What this machine offers a plan: CUDA GPUs, memory, Triton, kernel mode, and
the processes a launcher (torchrun) started.

A snapshot, so the resolution rules are pure functions of (configuration,
machine), and tests can plan for an H100 on a CPU-only host.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass, field

from okto.errors import UsageError

# sys.platform -> ENV.platform's names
_PLATFORMS = {"linux": "linux", "win32": "windows", "cygwin": "windows", "darwin": "mac"}


def this_platform() -> str:
    return _PLATFORMS.get(sys.platform, sys.platform)


@dataclass(frozen=True)
class Gpu:
    name: str
    capability: tuple[int, int]
    memory_bytes: int

    @property
    def bf16(self) -> bool:
        """bf16 math (and TF32) arrived with Ampere, sm_80."""
        return self.capability >= (8, 0)


@dataclass(frozen=True)
class Machine:
    """The facts the planner reads; `detect()` reads them from this process."""

    gpus: tuple[Gpu, ...] = ()
    cpu_memory_bytes: int | None = None
    triton: bool = False
    kernel_mode: str = "auto"  # OKTO_KERNELS
    interpreter: bool = False  # TRITON_INTERPRET=1: Triton kernels run on CPU tensors
    cuda_build: bool = True  # torch was built with CUDA
    world: int | None = None  # WORLD_SIZE, when a launcher (torchrun) started this process
    local_world: int | None = None  # LOCAL_WORLD_SIZE: the launcher's processes on this node
    platform: str = field(default_factory=this_platform)  # as ENV.platform names it

    @property
    def cuda(self) -> bool:
        return bool(self.gpus)

    @classmethod
    def detect(cls) -> Machine:
        import torch

        gpus = ()
        if torch.cuda.is_available():
            props = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
            gpus = tuple(Gpu(p.name, (p.major, p.minor), p.total_memory) for p in props)
        from okto.kernels import environment
        from okto.kernels.errors import KernelError

        try:  # every OKTO_* kernel setting, before anything runs
            environment.check()
        except KernelError as error:
            raise UsageError(str(error)) from None
        mode = environment.setting("OKTO_KERNELS")
        return cls(
            gpus=gpus,
            cpu_memory_bytes=_physical_memory(),
            triton=importlib.util.find_spec("triton") is not None,
            kernel_mode=mode,
            interpreter=os.environ.get("TRITON_INTERPRET", "0") == "1",
            cuda_build=torch.version.cuda is not None,
            world=_launcher_count("WORLD_SIZE"),
            local_world=_launcher_count("LOCAL_WORLD_SIZE"),
        )


def _launcher_count(name: str) -> int | None:
    """A process count torchrun put in the environment, or None outside a launcher."""
    value = os.environ.get(name)
    if value is None:
        return None
    if not value.strip().isdigit() or int(value) < 1:
        raise UsageError(f"{name}={value!r} is not a process count (torchrun sets it)")
    return int(value)


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
