"""Handing memory the data pipeline freed back to the operating system.

Reading a large file leaves freed memory that the allocators keep for reuse:
Arrow's pool keeps the pages of tables it freed (a shuffle and a split each
copy the records), and the C library keeps its heap after the parsed JSON
objects are gone. Tokenizing then allocates elsewhere (NumPy, Python buffers),
so that memory would only raise the peak. `release` gives it back.
"""

from __future__ import annotations

import ctypes
import functools


def release() -> None:
    """Return freed memory to the system: Arrow's pool's, and the C library's heap's where
    it can (glibc's `malloc_trim`; elsewhere only Arrow's)."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim  # the C library the process already runs on
    except (OSError, TypeError, AttributeError):  # not glibc, or no such lookup here
        return None
