"""NumPy in, NumPy out: the public kernel API also takes NumPy arrays.

Arrays are moved to the GPU when there is one, computed there, and come back
as NumPy arrays; torch tensors pass through untouched.
"""

from __future__ import annotations

import functools

import numpy as np
import torch


def accepts_numpy(fn):
    """Wrap `fn` so NumPy array arguments become tensors and a NumPy result comes back."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        for a in (*args, *kwargs.values()):  # a loop, not any(generator): every call pays it
            if isinstance(a, np.ndarray):
                break
        else:
            return fn(*args, **kwargs)
        device = "cuda" if torch.cuda.is_available() else "cpu"

        def to_tensor(a):
            return (
                torch.from_numpy(np.ascontiguousarray(a)).to(device)
                if isinstance(a, np.ndarray)
                else a
            )

        result = fn(*(to_tensor(a) for a in args), **{k: to_tensor(v) for k, v in kwargs.items()})
        return _to_numpy(result)

    return wrapper


def _to_numpy(result):
    if isinstance(result, torch.Tensor):
        out = result.detach()
        if out.dtype == torch.bfloat16:  # NumPy has no bfloat16
            out = out.float()
        return out.cpu().numpy()
    if isinstance(result, tuple):
        return tuple(_to_numpy(r) for r in result)
    return result
