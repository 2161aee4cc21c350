"""NumPy in, NumPy out: the public kernel API also takes NumPy arrays.

Arrays are moved to the device of the torch tensors passed beside them, or to the
GPU when there is one and no tensor says otherwise, computed there, and come back
as NumPy arrays; torch tensors pass through untouched.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from okto.kernels.backend import KernelError


def accepts_numpy(fn):
    """Wrap `fn` so NumPy array arguments become tensors and a NumPy result comes back."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        for a in (*args, *kwargs.values()):  # a loop, not any(generator): every call pays it
            if isinstance(a, np.ndarray):
                break
            if isinstance(a, list | tuple):  # no public op takes one: nested numbers, meant as data
                raise KernelError(
                    f"{fn.__name__} takes torch tensors or NumPy arrays, not a "
                    f"{type(a).__name__} (wrap it: numpy.asarray(...) or torch.tensor(...))"
                )
        else:
            return fn(*args, **kwargs)
        device = _device(*args, *kwargs.values())

        def to_tensor(a):
            if not isinstance(a, np.ndarray):
                return a
            # A read-only array (a memory map opened "r") drew PyTorch's warning about
            # non-writable tensors; a copy of it is writable, and contiguous as torch needs.
            # Not np.ascontiguousarray: it made a 0-d array 1-d, and the result came back [1].
            a = np.asarray(a, order="C") if a.flags.writeable else np.array(a)
            return torch.from_numpy(a).to(device)

        result = fn(*(to_tensor(a) for a in args), **{k: to_tensor(v) for k, v in kwargs.items()})
        return _to_numpy(result)

    return wrapper


def _device(*args) -> torch.device | str:
    """Where NumPy arguments go: beside the first torch tensor among `args` (a CPU tensor
    beside an array on a GPU machine was a mixed-device error), else the GPU if any."""
    for a in args:
        if isinstance(a, torch.Tensor):
            return a.device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _to_numpy(result):
    if isinstance(result, torch.Tensor):
        out = result.detach()
        if out.dtype == torch.bfloat16:  # NumPy has no bfloat16
            out = out.float()
        return out.cpu().numpy()
    if isinstance(result, tuple):
        return tuple(_to_numpy(r) for r in result)
    return result
