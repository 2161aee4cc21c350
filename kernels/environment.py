"""The environment variables that steer okto's kernels: names, accepted values, defaults.

They are read when a kernel is called (tests and benchmarks switch them between
calls), except OKTO_DIRECT_LAUNCH and OKTO_POISON_OUTPUTS, read once at import.
A value outside the list is an error naming the accepted ones, never a silent
fallback to the default; `check()` validates all of them at once, as `okto
train` and `okto plan` do before anything runs. This module imports nothing
heavy: the planner reads it on machines it only plans for.
"""

from __future__ import annotations

import os

from okto.kernels.errors import KernelError

VARIABLES: dict[str, tuple[str, ...]] = {
    # the first value is the default
    "OKTO_KERNELS": ("auto", "triton", "native"),  # Triton on CUDA / always / never
    "OKTO_GEMM": ("auto", "tma", "simple"),  # the GEMM kernel: TMA on sm_90+ / forced / never
    "OKTO_ATTENTION_TMA": ("auto", "1", "0"),  # attention's TMA loads: Hopper / forced / never
    "OKTO_AUTOTUNE": ("time", "first"),  # time every configuration, or take the first
    "OKTO_DIRECT_LAUNCH": ("1", "0"),  # okto's cached launch path, or Triton's own
    "OKTO_POISON_OUTPUTS": ("0", "1"),  # tests: NaN-fill kernel outputs before each call
}


def setting(name: str) -> str:
    """The variable's value, lower-cased, or its default when unset or empty."""
    allowed = VARIABLES[name]
    value = os.environ.get(name, "").strip().lower() or allowed[0]
    if value not in allowed:
        raise KernelError(f"{name}={value!r} is not one of {', '.join(allowed)}")
    return value


def check() -> None:
    """Raise for the first variable that is set to a value okto does not accept."""
    for name in VARIABLES:
        setting(name)
