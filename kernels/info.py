"""`okto.kernels.info()`: what the kernel library will do on this machine, for humans and bug reports."""

from __future__ import annotations

import torch

from okto.kernels import backend
from okto.kernels.device import get_device_info


def running() -> str:
    """Which implementation the ops run on this machine's default device, in words."""
    on_gpu = torch.cuda.is_available()
    chosen = backend.mode()
    if not backend.triton_available() or chosen == "native" or not (on_gpu or chosen == "triton"):
        return "native (PyTorch reference)"
    if on_gpu:
        return "triton"
    if backend.interpreting():
        return "triton (interpreter, CPU tensors)"
    return "none: OKTO_KERNELS=triton on a CPU needs TRITON_INTERPRET=1"  # every op refuses


def info() -> dict:
    """Versions, the selected backend, and the device the kernels would run on."""
    triton_version = None
    if backend.triton_available():
        import triton

        triton_version = triton.__version__
    return {
        "torch": torch.__version__,
        "triton": triton_version,
        "mode": backend.mode(),
        "interpreter": backend.interpreting(),
        "kernels": running(),
        "device": get_device_info().as_dict(),
    }
