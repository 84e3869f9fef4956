"""Work in a forked process, for tests that must kill a process or change its limits without clean-up."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable


def in_child(work: Callable[[], int]) -> int:
    """Run ``work`` in a forked process; its return value is the exit code (1 if it raised, or whatever
    code the work ends the process with itself, e.g. ``os._exit(137)``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Python 3.12+ warns of fork in a threaded process
        pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = work()
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
