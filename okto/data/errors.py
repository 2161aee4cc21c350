"""Errors and warnings about training data.

A bad data file is invalid input, like a bad `.okt` file: exit code 2. Problems
okto can work around (a truncated tail, a few broken lines) are warnings the
user sees and that the run's statistics keep.
"""

from __future__ import annotations

import warnings

from okto.errors import EXIT_INVALID, OktoError


class DataError(OktoError):
    """A data file or DATASET setting okto cannot use."""

    exit_code = EXIT_INVALID


class DataWarning(UserWarning):
    """Something in the data was skipped or repaired."""


def warn(message: str, sink: list[str]) -> None:
    """Show a data warning and keep it for the statistics."""
    warnings.warn(message, DataWarning, stacklevel=3)
    sink.append(message)
