"""Errors and warnings about training data.

A bad data file is invalid input, like a bad `.okt` file: exit code 2. Problems
okto can work around (a truncated tail, a few broken lines) are warnings the
user sees and that the run's statistics keep.
"""

from __future__ import annotations

import json
import warnings

from okto.errors import EXIT_INVALID, OktoError


class DataError(OktoError):
    """A data file or DATASET setting okto cannot use."""

    exit_code = EXIT_INVALID


# What json raises for a value it cannot read: JSONDecodeError (a ValueError) for bad
# syntax, a plain ValueError for an integer past Python's digit limit, RecursionError for
# nesting deeper than the stack.
JSON_ERRORS = (ValueError, RecursionError)


def json_reason(error: Exception) -> str:
    """Why json could not read a value, in a few words."""
    if isinstance(error, json.JSONDecodeError):
        # json's message for some errors ends in "at", its position following
        return f"{error.msg.removesuffix(' at')} at column {error.colno}"
    if isinstance(error, UnicodeDecodeError):
        return "not UTF-8 text"
    if isinstance(error, RecursionError):
        return "nested too deeply"
    return str(error).split(";")[0]  # "Exceeds the limit (4300 digits) for integer ..."


class DataWarning(UserWarning):
    """Something in the data was skipped or repaired."""


def warn(message: str, sink: list[str]) -> None:
    """Show a data warning and keep it for the statistics."""
    warnings.warn(message, DataWarning, stacklevel=3)
    sink.append(message)
