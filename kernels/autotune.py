"""Autotuning that suits both the GPU and the interpreter.

On a GPU, `triton.autotune` times every configuration once per shape class and,
where the installed Triton supports it, caches the winner on disk so a second
process does not tune again. Under `TRITON_INTERPRET=1` timing means nothing,
so only the first configuration is kept: list a small, valid one first.

`OKTO_AUTOTUNE=first` (the GPU tests set it) skips the timing on the GPU too and
takes the first configuration that the kernel's own pruning keeps, so a test
compiles one configuration per shape class instead of all of them; list first
a configuration that fits every dtype. Tests that must see every configuration
pin `kernel.configs` to each in turn.

`launch` calls a tuned kernel without the autotuner's per-call work (it builds
a key from every argument on each call, ~10 us on a Hopper host for a kernel
with twenty arguments) once the launcher's own key has a tuned configuration.
"""

from __future__ import annotations

import inspect
import os

import triton

from okto.kernels import backend

_CAN_CACHE = "cache_results" in inspect.signature(triton.autotune).parameters


def _first_only() -> bool:
    return os.environ.get("OKTO_AUTOTUNE", "time").strip().lower() == "first"


def autotune(configs: list[triton.Config], key: list[str], **kwargs):
    """`triton.autotune` with on-disk caching where available and one config when interpreting."""
    if backend.interpreting():
        configs = configs[:1]
    if _CAN_CACHE:
        kwargs.setdefault("cache_results", True)
    prune_by = dict(kwargs.pop("prune_configs_by", None) or {})
    own_prune = prune_by.get("early_config_prune")

    def prune(configs, named_args, **meta):
        kept = own_prune(configs, named_args, **meta) if own_prune else configs
        return kept[:1] if _first_only() else kept

    prune_by["early_config_prune"] = prune
    return triton.autotune(configs=configs, key=key, prune_configs_by=prune_by, **kwargs)


def config(num_warps: int = 4, num_stages: int = 3, **meta) -> triton.Config:
    """A `triton.Config` from keyword meta-parameters: `config(BLOCK_M=128, num_warps=8)`."""
    return triton.Config(meta, num_warps=num_warps, num_stages=num_stages)


def launch(kernel, grid, key: tuple, *args, **kwargs) -> None:
    """`kernel[grid](*args, **kwargs)` for a kernel made by `autotune`.

    `key` must tell apart every case the autotuner's key does (its key values and
    the tensors' dtypes). The first call for a key goes through the autotuner
    (tuning, or its cache); later calls launch its choice directly. A test that
    pins `kernel.configs` gets a fresh lookup, since the choice is remembered
    together with the configuration list it came from.
    """
    if backend.interpreting():
        kernel[grid](*args, **kwargs)
        return
    cache = kernel.__dict__.setdefault("_okto_choices", {})
    hit = cache.get(key)
    if hit is not None and hit[0] is kernel.configs:
        kernel.fn.run(*args, grid=grid, warmup=False, **kwargs, **hit[1])
        return
    kernel[grid](*args, **kwargs)
    cache[key] = (kernel.configs, kernel.best_config.all_kwargs())
