"""The one exception the kernel library raises for bad input (no torch import: the planner
reads it on machines it only plans for)."""

from __future__ import annotations

from okto.errors import UsageError


class KernelError(UsageError, ValueError):
    """A kernel was called with inputs it cannot take (dtype, shape, device), or an OKTO_*
    environment variable holds a value it does not accept (some are read when the library
    is imported). A usage error: okto's commands print it and exit with code 2."""
