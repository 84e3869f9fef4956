"""Stopping cleanly: SIGINT (Ctrl-C) or SIGTERM asks a run, or an experiment, to stop after its step."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any, Self

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # what stops a run after its step


class StopSignals:
    """While active, SIGINT and SIGTERM call :meth:`_handle`; the old handlers come back after.

    Installed only in the main thread, where Python delivers signals.
    """

    def __enter__(self) -> Self:
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            self._previous = {number: signal.signal(number, self._handle) for number in STOP_SIGNALS}
        return self

    def __exit__(self, *exception: object) -> None:
        for number, previous in self._previous.items():  # None: a handler not set from Python; Python's own then
            default = signal.default_int_handler if number == signal.SIGINT else signal.SIG_DFL
            signal.signal(number, previous if previous is not None else default)

    def _handle(self, signum: int, frame: object) -> None:
        raise NotImplementedError


class StopRequest(StopSignals):
    """Ctrl-C (SIGINT) or SIGTERM: the first asks the run to stop after the current step, a second stops it at once."""

    def __init__(self) -> None:
        self.requested = False

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nbbvp: stopping after this step (Ctrl-C again stops at once; the last checkpoint stays valid)",
              file=sys.stderr, flush=True)
