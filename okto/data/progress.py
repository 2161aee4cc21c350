"""Silencing `datasets`' and `transformers`' progress bars while okto works: the trainer
shows its own, and their bars on stderr would cut through its lines."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quiet_datasets() -> Iterator[None]:
    """Turn off `datasets`' progress bars and log, restoring the user's settings afterwards."""
    import datasets
    from datasets.utils import logging as ds_logging

    bars_were_off = datasets.are_progress_bars_disabled()
    level = ds_logging.get_verbosity()
    datasets.disable_progress_bars()
    # Its readers log a failure before raising it, which okto then reports in its words.
    ds_logging.set_verbosity(ds_logging.CRITICAL)
    try:
        yield
    finally:
        ds_logging.set_verbosity(level)
        if not bars_were_off:
            datasets.enable_progress_bars()


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Turn off `transformers`' progress bars (loading and saving weights), restoring the
    user's setting afterwards."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()
