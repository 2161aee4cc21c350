"""Progress of data preparation, and silence from `datasets`' and `transformers`' own bars.

Reading, training a tokenizer and tokenizing a large file take minutes. The data
code names each stage with `stage("tokenizing 17,671 records")`; whoever shows
progress (the trainer's spinner) listens with `reporting_stages(callback)`. With
no listener a stage costs nothing. The libraries' own bars are turned off: on
stderr they would cut through okto's lines.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_listener: ContextVar[Callable[[str], None] | None] = ContextVar("okto_data_stage", default=None)


def stage(text: str) -> None:
    """Say what data preparation is doing now, to whoever listens."""
    listener = _listener.get()
    if listener is not None:
        listener(text)


@contextmanager
def reporting_stages(callback: Callable[[str], None]) -> Iterator[None]:
    """Send the stages of data preparation inside this block to `callback`."""
    token = _listener.set(callback)
    try:
        yield
    finally:
        _listener.reset(token)


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
