"""`okto.kernels.info()`: what the kernel library will do on this machine, for humans and bug reports."""

from __future__ import annotations

import torch

from okto.kernels import backend
from okto.kernels.device import get_device_info


def info() -> dict:
    """Versions, the selected backend, and the device the kernels would run on."""
    triton_version = None
    if backend.triton_available():
        import triton

        triton_version = triton.__version__
    device = get_device_info()
    on_gpu = torch.cuda.is_available()
    chosen = backend.mode()
    if triton_version is None or chosen == "native" or not (on_gpu or chosen == "triton"):
        kernels = "native (PyTorch reference)"
    elif on_gpu:
        kernels = "triton"
    elif backend.interpreting():
        kernels = "triton (interpreter, CPU tensors)"
    else:  # every op would refuse: say how to fix it
        kernels = "none: OKTO_KERNELS=triton on a CPU needs TRITON_INTERPRET=1"
    return {
        "torch": torch.__version__,
        "triton": triton_version,
        "mode": chosen,
        "interpreter": backend.interpreting(),
        "kernels": kernels,
        "device": device.as_dict(),
    }
