"""The one exception the kernel library raises for bad input (no torch import: the planner
reads it on machines it only plans for)."""


class KernelError(ValueError):
    """A kernel was called with inputs it cannot take (dtype, shape, device), or an OKTO_*
    environment variable holds a value it does not accept."""
