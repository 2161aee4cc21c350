"""Ctrl-C and SIGTERM: finish the current step, save a checkpoint, exit cleanly.

In the training loop the first signal only sets a flag the loop checks after
each step and before each evaluation batch, so the run stops at a step boundary
(an evaluation in progress abandoned, to be done again on resume) with a
checkpoint it can resume from. A second signal gives up waiting and ends the command at once. Outside
the loop (data preparation, building the model, the final saves) there is no
step to finish: Ctrl-C raises KeyboardInterrupt, and SIGTERM, whose default
would kill the process without a word, raises `Terminated`. The exit codes
follow the shell's convention: 128 + the signal number (130 for SIGINT, 143
for SIGTERM).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM where no step can finish first: the command ends at once (exit 143)."""

    exit_code = 128 + signal.SIGTERM


class StopSignals:
    """Context manager: catches SIGINT and SIGTERM (in the main thread) while training runs."""

    def __init__(self, on_first: Callable[[str], None]):
        self.received: int | None = None
        self._on_first = on_first
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _handle(self, number: int, frame) -> None:
        if self.received is not None:
            raise Terminated if number == signal.SIGTERM else KeyboardInterrupt
        self.received = number
        self._on_first(signal.Signals(number).name)


@contextlib.contextmanager
def terminate_at_once() -> Iterator[None]:
    """While inside, SIGTERM (in the main thread) raises `Terminated`, as Ctrl-C raises
    KeyboardInterrupt, so the command can say so and exit with 143."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(number: int, frame) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
