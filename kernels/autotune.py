"""Autotuning that suits both the GPU and the interpreter, and a cheap launch path.

On a GPU, `triton.autotune` times every configuration once per shape class and,
where the installed Triton supports it, caches the winner on disk so a second
process does not tune again. Under `TRITON_INTERPRET=1` timing means nothing,
so only the first configuration is kept: list a small, valid one first.

`OKTO_AUTOTUNE=first` (the GPU tests set it) skips the timing on the GPU too and
takes the first configuration that the kernel's own pruning keeps, so a test
compiles one configuration per shape class instead of all of them; list first
a configuration that fits every dtype. Tests that must see every configuration
pin `kernel.configs` to each in turn.

Every okto kernel is launched through `launch`. Triton's own path costs 7 to
18 us of Python per call before the driver is reached (the autotuner rebuilds
its key from every argument; `JITFunction.run` binds and specialises every
argument and formats a cache key from the options), which on the Hopper hosts is
more than many of these kernels take on the GPU. `launch` remembers, per call
site key and per argument specialisation, the compiled kernel Triton chose and
calls its launcher directly, as `JITFunction.run` itself does once it has found
the kernel. `OKTO_DIRECT_LAUNCH=0` (read at import) keeps Triton's path for
every call, for comparison.
"""

from __future__ import annotations

import inspect

import torch
import triton
from triton.runtime.autotuner import Autotuner
from triton.runtime.driver import driver
from triton.runtime.jit import JITFunction

from okto.kernels import backend, environment

try:
    from triton import knobs
except ImportError:  # Triton before 3.4: no launch hooks to forward
    knobs = None

_CAN_CACHE = "cache_results" in inspect.signature(triton.autotune).parameters
_DIRECT = environment.setting("OKTO_DIRECT_LAUNCH") == "1"


def _first_only() -> bool:
    return environment.setting("OKTO_AUTOTUNE") == "first"


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


# ---------------------------------------------------------------------------
# Launching


def specialization(args: tuple) -> tuple:
    """What Triton's JIT specialises a kernel on, for each positional argument, or finer.

    Integers: the value 1 (compiled in as a constant), divisibility by 16, and the
    integer type (i32, i64, u64); tensors: the dtype and a 16-byte-aligned address;
    floats and bools are not specialised; anything else by value. Two argument
    lists with equal results here get the same compiled kernel from Triton. (One
    comprehension over the common types: this runs for every launch.)
    """
    return tuple(
        [
            (a.dtype, a.data_ptr() & 15 == 0)
            if (kind := type(a)) is _TENSOR
            else (
                1
                if a == 1
                else 2 + (a & 15 == 0) + 2 * (_I32_MIN <= a <= _I32_MAX) + 4 * (a > _I64_MAX)
            )
            if kind is int
            else _other_specialization(a, kind)
            for a in args
        ]
    )


_TENSOR = torch.Tensor
_I32_MIN, _I32_MAX, _I64_MAX = -(2**31), 2**31 - 1, 2**63 - 1


def _other_specialization(a, kind):
    if kind is float or kind is bool:
        return kind
    if isinstance(a, torch.Tensor):  # subclasses such as Parameter
        return (a.dtype, a.data_ptr() & 15 == 0)
    return a


class _Direct:
    """One compiled kernel and the constexpr arguments that follow the positional ones."""

    __slots__ = ("configs", "function", "kernel", "launcher", "meta", "packed", "tail")

    def __init__(self, configs, kernel, tail: tuple, meta: dict):
        self.configs, self.kernel, self.tail, self.meta = configs, kernel, tail, meta
        self.launcher, self.function, self.packed = (
            kernel.run,
            kernel.function,
            kernel.packed_metadata,
        )

    def __call__(self, grid, device: int, args: tuple, kwargs: dict) -> None:
        if callable(grid):
            grid = grid(self.meta)
        size = len(grid)
        stream = driver.active.get_current_stream(device)
        params = (*args, *self.tail)
        enter, leave = _hooks()
        metadata = (
            None
            if enter is None and leave is None
            else self.kernel.launch_metadata(grid, stream, *params)
        )
        self.launcher(
            grid[0], grid[1] if size > 1 else 1, grid[2] if size > 2 else 1, stream,
            self.function, self.packed, metadata, enter, leave, *params,
        )  # fmt: skip


class _Tuned:
    """Triton's JIT path with the autotuner's choice applied (no per-call key building)."""

    __slots__ = ("config", "configs", "fn")

    def __init__(self, configs, fn, config: dict):
        self.configs, self.fn, self.config = configs, fn, config

    def __call__(self, grid, device: int, args: tuple, kwargs: dict) -> None:
        self.fn.run(*args, grid=grid, warmup=False, **kwargs, **self.config)


def _hooks() -> tuple:
    """Triton's launch hooks (profilers), each None when nothing is registered: the
    launcher then skips the call, and the launch metadata need not be built."""
    if knobs is None:
        return None, None
    return _active(knobs.runtime.launch_enter_hook), _active(knobs.runtime.launch_exit_hook)


def _active(hook):
    # Triton 3.9 keeps a HookChain that is never None; older versions a callable or None.
    return hook if hook is not None and getattr(hook, "calls", True) else None


def _is_compiled(kernel) -> bool:
    return all(hasattr(kernel, a) for a in ("run", "function", "packed_metadata"))


def _entry(kernel, grid, compiled, args: tuple, kwargs: dict):
    """How later calls with this lookup launch: directly when the kernel is a JITFunction
    (under an autotuner at most) called with its runtime arguments by position and its
    constexpr ones by keyword, through Triton with the tuned configuration otherwise
    (heuristics, OKTO_DIRECT_LAUNCH=0)."""
    configs = getattr(kernel, "configs", None)
    tuned = kernel.best_config.all_kwargs() if isinstance(kernel, Autotuner) else {}
    meta = {**kwargs, **tuned}
    jit = kernel.fn if isinstance(kernel, Autotuner) else kernel
    if not isinstance(jit, JITFunction):
        return _Tuned(configs, kernel.fn, tuned) if tuned else None
    params = jit.params[len(args) :]
    positional_constexpr = any(p.is_constexpr for p in jit.params[: len(args)])
    if (
        not _DIRECT
        or positional_constexpr
        or not all(p.is_constexpr and p.name in meta for p in params)
    ):
        return _Tuned(configs, jit, tuned)
    if not _is_compiled(compiled):  # e.g. a Triton whose autotuner returns nothing
        compiled = jit.run(*args, grid=grid, warmup=True, **meta)
        if not _is_compiled(compiled):
            return _Tuned(configs, jit, tuned)
    return _Direct(configs, compiled, tuple(meta[p.name] for p in params), meta)


def launch(kernel, grid, key: tuple, *args, **kwargs) -> None:
    """`kernel[grid](*args, **kwargs)` for a Triton kernel, autotuned (made by `autotune`) or not.

    Runtime arguments are positional and constexpr ones by keyword. `key` must tell
    apart every case the autotuner's key does (its key values; dtypes, argument
    alignment and keyword values are added here). The first call for a key and an
    argument specialisation goes through Triton (tuning, its cache, compiling);
    later calls launch the same compiled kernel directly. A test that pins
    `kernel.configs` gets a fresh lookup: the choice is remembered together with
    the configuration list it came from. Grid callables receive the keyword and
    configuration meta-parameters (BLOCK_M and so on), not the runtime arguments.
    """
    cache = kernel.__dict__.get("_okto_launches")
    if cache is not None:  # only ever made for compiled (not interpreted) kernels
        device = driver.active.get_current_device()
        lookup = (key, device, specialization(args), *kwargs.values())
        hit = cache.get(lookup)
        if hit is not None and hit.configs is getattr(kernel, "configs", None):
            hit(grid, device, args, kwargs)
            return
    if backend.interpreting():
        kernel[grid](*args, **kwargs)
        return
    if cache is None:
        cache = kernel.__dict__.setdefault("_okto_launches", {})
        device = driver.active.get_current_device()
        lookup = (key, device, specialization(args), *kwargs.values())
    compiled = kernel[grid](*args, **kwargs)
    entry = _entry(kernel, grid, compiled, args, kwargs)
    if entry is not None:
        cache[lookup] = entry
