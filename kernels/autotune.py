"""Autotuning that suits both the GPU and the interpreter.

On a GPU, `triton.autotune` times every configuration once per shape class and,
where the installed Triton supports it, caches the winner on disk so a second
process does not tune again. Under `TRITON_INTERPRET=1` timing means nothing,
so only the first configuration is kept: list a small, valid one first.
"""

from __future__ import annotations

import inspect

import triton

from okto.kernels import backend

_CAN_CACHE = "cache_results" in inspect.signature(triton.autotune).parameters


def autotune(configs: list[triton.Config], key: list[str], **kwargs):
    """`triton.autotune` with on-disk caching where available and one config when interpreting."""
    if backend.interpreting():
        configs = configs[:1]
    if _CAN_CACHE:
        kwargs.setdefault("cache_results", True)
    return triton.autotune(configs=configs, key=key, **kwargs)


def config(num_warps: int = 4, num_stages: int = 3, **meta) -> triton.Config:
    """A `triton.Config` from keyword meta-parameters: `config(BLOCK_M=128, num_warps=8)`."""
    return triton.Config(meta, num_warps=num_warps, num_stages=num_stages)
