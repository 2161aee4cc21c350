"""Which implementation runs an op: okto's Triton kernels or the PyTorch reference.

`OKTO_KERNELS=triton` forces the Triton path even on CPU tensors (run it with
`TRITON_INTERPRET=1` to use Triton's interpreter), `OKTO_KERNELS=native` forces
the reference, and the default (`auto`) picks Triton for CUDA tensors when
Triton is importable.
"""

from __future__ import annotations

import functools
import os

import torch

MODES = ("auto", "triton", "native")


class KernelError(ValueError):
    """A kernel was called with inputs it cannot take (dtype, shape, device)."""


def mode() -> str:
    value = os.environ.get("OKTO_KERNELS", "auto").strip().lower() or "auto"
    if value not in MODES:
        raise KernelError(f"OKTO_KERNELS={value!r} is not one of {', '.join(MODES)}")
    return value


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def interpreting() -> bool:
    """True when Triton kernels run in the interpreter (CPU tensors allowed)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(*tensors: torch.Tensor) -> bool:
    """Decide, for these input tensors, whether the Triton path runs."""
    chosen = mode()
    if chosen == "native" or not triton_available():
        if chosen == "triton":
            raise KernelError("OKTO_KERNELS=triton but Triton is not installed")
        return False
    on_cuda = all(t.is_cuda for t in tensors)
    if chosen == "triton":
        if not on_cuda and not interpreting():
            raise KernelError(
                "OKTO_KERNELS=triton on CPU tensors needs TRITON_INTERPRET=1 (Triton's interpreter)"
            )
        return True
    return on_cuda


def check_same_device(*tensors: torch.Tensor) -> None:
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        names = ", ".join(sorted(str(d) for d in devices))
        raise KernelError(f"inputs are on different devices ({names}); move them to one device")


def check_dtype(t: torch.Tensor, allowed: tuple[torch.dtype, ...], what: str) -> None:
    if t.dtype not in allowed:
        names = ", ".join(str(d).removeprefix("torch.") for d in allowed)
        raise KernelError(
            f"{what} has dtype {str(t.dtype).removeprefix('torch.')}; supported: {names}"
        )


def poisoning() -> bool:
    """Tests set OKTO_POISON_OUTPUTS=1 so that any output element a kernel fails to write is NaN."""
    return os.environ.get("OKTO_POISON_OUTPUTS", "0") == "1"


def empty(*shape: int, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """Allocate a kernel's output; NaN-filled when poisoning is on."""
    out = torch.empty(*shape, dtype=dtype, device=device)
    if poisoning() and out.is_floating_point():
        out.fill_(float("nan"))
    return out


def empty_like(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    return empty(*t.shape, dtype=dtype or t.dtype, device=t.device)
