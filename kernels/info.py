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
    runs_triton = triton_version is not None and (
        chosen == "triton" or (chosen == "auto" and on_gpu)
    )
    return {
        "torch": torch.__version__,
        "triton": triton_version,
        "mode": chosen,
        "interpreter": backend.interpreting(),
        "kernels": "triton" if runs_triton else "native (PyTorch reference)",
        "device": device.as_dict(),
    }
