"""What the GPU can do: peak dense matrix rates and memory bandwidth by model.

MFU and bandwidth utilisation are only as honest as their denominators, so the
peaks are the vendors' datasheet figures for dense (not 2:4 sparse) math,
looked up by the name CUDA reports. An unknown GPU gets no peak, and no MFU is
reported for it rather than a made-up one.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import torch

from okto.kernels.errors import KernelError


@dataclass(frozen=True)
class Peak:
    """Datasheet peaks: dense TFLOP/s by precision, and memory bandwidth in TB/s."""

    bf16: float | None
    fp16: float
    tf32: float
    fp32: float
    bandwidth_tbps: float
    fp8: float | None = None

    def tflops(self, precision: str) -> float | None:
        return getattr(self, precision, None)


# (model, variant or None, peak), most specific first. Both are matched as whole words of
# the CUDA device name, so an L40 is not taken for an L4 nor an RTX A1000 for an A100.
_PEAKS: list[tuple[str, str | None, Peak]] = [
    ("H200", "NVL", Peak(835.5, 835.5, 417.5, 60.0, 4.8, fp8=1670.5)),
    ("H200", None, Peak(989.4, 989.4, 494.7, 66.9, 4.8, fp8=1978.9)),
    ("GH200", None, Peak(989.4, 989.4, 494.7, 66.9, 4.0, fp8=1978.9)),  # its H100 (96 GB)
    ("H100", "PCIe", Peak(756.0, 756.0, 378.0, 51.2, 2.0, fp8=1513.0)),
    ("H100", "NVL", Peak(835.5, 835.5, 417.5, 60.0, 3.9, fp8=1670.5)),
    ("H100", None, Peak(989.4, 989.4, 494.7, 66.9, 3.35, fp8=1978.9)),  # SXM
    ("H800", "PCIe", Peak(756.0, 756.0, 378.0, 51.2, 2.0, fp8=1513.0)),
    ("H800", None, Peak(989.4, 989.4, 494.7, 66.9, 3.35, fp8=1978.9)),  # SXM
    ("A100", "80GB", Peak(312.0, 312.0, 156.0, 19.5, 2.039)),
    ("A100", None, Peak(312.0, 312.0, 156.0, 19.5, 1.555)),
    ("L40S", None, Peak(362.1, 362.1, 183.0, 91.6, 0.864, fp8=733.0)),
    ("L40", None, Peak(181.0, 181.0, 90.5, 90.5, 0.864, fp8=362.1)),
    ("L4", None, Peak(121.0, 121.0, 60.0, 30.3, 0.3, fp8=242.0)),
    ("A10", None, Peak(125.0, 125.0, 62.5, 31.2, 0.6)),
    ("RTX 4090", None, Peak(165.2, 165.2, 82.6, 82.6, 1.008, fp8=330.3)),
    ("RTX 3090", None, Peak(71.0, 71.0, 35.6, 35.6, 0.936)),
    # No bf16 tensor cores before Ampere: bf16 there is emulated, and has no peak to quote.
    ("V100", None, Peak(None, 125.0, 15.7, 15.7, 0.9)),  # SXM2
    ("T4", None, Peak(None, 65.0, 8.1, 8.1, 0.32)),
]


_SEPARATORS = re.compile(r"[\s_-]+")


def peak_for(name: str) -> Peak | None:
    """The datasheet peak for a CUDA device name, or None when the model is unknown."""
    words = " " + " ".join(_SEPARATORS.split(name)) + " "  # "A100-SXM4-80GB": " A100 SXM4 80GB "
    for model, variant, peak in _PEAKS:
        if f" {model} " in words and (variant is None or f" {variant} " in words):
            return peak
    return None


@dataclass(frozen=True)
class DeviceInfo:
    """What `get_device_info()` reports; on a machine without CUDA, the name "cpu" and Nones."""

    name: str
    compute_capability: tuple[int, int] | None
    multiprocessors: int | None
    memory_gib: float | None
    peak: Peak | None

    def as_dict(self) -> dict:
        return asdict(self)


def get_device_info(device: int | str | torch.device | None = None) -> DeviceInfo:
    """Name, compute capability, SM count, memory and datasheet peaks of a CUDA device (or
    the CPU). None means the current CUDA device, or the CPU on a machine without CUDA; a
    CUDA device this machine lacks is a KernelError (torch raised its own errors for it,
    and for "cpu" on a GPU machine)."""
    if device is None:
        device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    except (RuntimeError, TypeError):
        raise KernelError(f"get_device_info: {device!r} is not a device") from None
    if device.type == "cpu":
        return DeviceInfo("cpu", None, None, None, None)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = torch.cuda.current_device() if device.index is None and count else device.index or 0
    if device.type != "cuda" or index >= count:
        raise KernelError(
            f"get_device_info: no device {device}; this machine has "
            + (
                f"cuda:0 to cuda:{count - 1} and the cpu"
                if count
                else "no CUDA device, only the cpu"
            )
        )
    props = torch.cuda.get_device_properties(index)
    return DeviceInfo(
        name=props.name,
        compute_capability=(props.major, props.minor),
        multiprocessors=props.multi_processor_count,
        memory_gib=props.total_memory / 2**30,
        peak=peak_for(props.name),
    )


def is_cuda_available() -> bool:
    """Whether the ops run on a GPU here (NumPy arrays go there; tensors stay where they are)."""
    return torch.cuda.is_available()
