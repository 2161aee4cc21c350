"""Hopper's tensor memory accelerator (TMA): where okto's kernels may use it, and its scratch.

A TMA descriptor lets one thread move a whole tile between global and shared
memory, out-of-bounds rows filled with zeros, instead of every thread computing
and masking addresses. Triton builds the descriptors on the device
(`tl.make_tensor_descriptor`) and writes them into global scratch that the
allocator set with `triton.set_allocator` provides. The hardware wants the base
address and every row stride 16-byte aligned and the innermost stride 1.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from okto.kernels import backend

AVAILABLE = hasattr(tl, "make_tensor_descriptor") and hasattr(triton, "set_allocator")


def _workspace(size: int, alignment: int, stream):
    """Global scratch that a kernel writes its device-side descriptors into."""
    return torch.empty(size, dtype=torch.int8, device="cuda")


def set_workspace() -> None:
    """Call before launching a kernel that builds descriptors: the allocator is a context
    variable, so it is set per launch rather than once at import."""
    triton.set_allocator(_workspace)


@functools.cache
def _hopper_or_newer(device: torch.device) -> bool:
    return torch.cuda.get_device_capability(device)[0] >= 9


def usable(t: torch.Tensor, forced: bool) -> bool:
    """Whether a kernel may take the TMA path for `t`'s device: a Hopper (or newer) GPU,
    or Triton's interpreter when `forced` (the tests' way to check that path on a CPU)."""
    if not AVAILABLE:
        return False
    if backend.interpreting():
        return forced
    return t.is_cuda and _hopper_or_newer(t.device)


def rows_aligned(t: torch.Tensor) -> bool:
    """Whether every 2-D slice `t[..., :, :]` can be read as rows by TMA in place: the last
    stride 1, the others and the base address multiples of 16 bytes."""
    item = t.element_size()
    if t.stride(-1) != 1 or t.data_ptr() % 16:
        return False
    for stride in t.stride()[:-1]:  # noqa: SIM110 (cheaper than all(generator) per call)
        if (stride * item) % 16:
            return False
    return True
