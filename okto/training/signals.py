"""Ctrl-C and SIGTERM: finish the current step, save a checkpoint, exit cleanly.

The first signal only sets a flag the loop checks after each step, so the run
stops at a step boundary with a checkpoint it can resume from. A second
Ctrl-C gives up waiting and raises KeyboardInterrupt at once. The exit codes
follow the shell's convention: 128 + the signal number (130 for SIGINT, 143
for SIGTERM).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable


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
            raise KeyboardInterrupt
        self.received = number
        self._on_first(signal.Signals(number).name)
