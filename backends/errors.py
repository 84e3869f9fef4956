"""Every error blackbox-vp raises on purpose, under one root a caller can catch (after httpx's
``_exceptions.py``, which documents its tree the same way)::

    BlackboxVPError
    ├── ConfigurationError (a ValueError)   a setting, file, data set or registry name that cannot be used:
    │   │                                   the message names it and what it takes; fix it and run again
    │   └── DirectoryInUse                  another process holds the run's or the experiment's directory
    ├── BackendError (a RuntimeError)       the model could not answer, or answered something that is not
    │   │                                   scores; ``status`` is the last HTTP status (None: no answer came)
    │   ├── RetryableError                  a status worth retrying (429, 503, ...); ``retry_after`` in seconds
    │   ├── CodecError                      an answer or server metadata that does not follow its wire format
    │   └── ScoresError                     numbers that are not the kind ``--scores`` says (or ``auto`` tells)
    ├── BudgetExhausted (a RuntimeError)    a query refused before it would send more images than the budget
    └── RunDirectoryError (an OSError)      a file of the run directory could not be written

``bbvp`` exits 2 on a ConfigurationError or a RunDirectoryError (nothing was lost: fix and rerun or
resume) and 1 on a BackendError or BudgetExhausted. Each also derives from the built-in exception
named beside it, so code written against those keeps working. Ctrl-C is not an error: a stopped run
raises :class:`blackbox_vp.run.RunInterrupted`, a ``KeyboardInterrupt``.

These live in ``backends``, the lower of the two packages, so that both raise them without an import
circle; ``blackbox_vp`` exports them too.
"""

from __future__ import annotations


class BlackboxVPError(Exception):
    """The root: every error blackbox-vp raises on purpose."""


class ConfigurationError(BlackboxVPError, ValueError):
    """A setting, file, data set or name that cannot be used; the message names it and what it takes."""


class DirectoryInUse(ConfigurationError):
    """Another process holds the directory's lock."""


class BackendError(BlackboxVPError, RuntimeError):
    """A backend could not answer, or answered something that is not valid scores.

    ``status``: the last HTTP status of a remote backend (200 when an answer came but could not be
    used), None when no answer came or the backend is local.
    """

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class RetryableError(BackendError):
    """A status worth retrying (429, 503, ...); ``retry_after`` is the server's hint in seconds, if any."""

    def __init__(self, message: str, status: int, retry_after: float | None):
        super().__init__(message, status)
        self.retry_after = retry_after


class CodecError(BackendError):
    """An answer (or server metadata) that does not follow the wire format."""


class ScoresError(BackendError):
    """The answer's numbers are not of the kind that ``--scores`` says (or that ``auto`` can tell)."""


class BudgetExhausted(BlackboxVPError, RuntimeError):
    """Raised *before* a query that would send more images than the budget allows."""

    def __init__(self, requested: int, used: int, budget: int):
        super().__init__(f"query of {requested} images refused: {used} of the budget of {budget} images already "
                         f"used, {budget - used} left")
        self.requested = requested
        self.used = used
        self.budget = budget


class RunDirectoryError(BlackboxVPError, OSError):
    """A file of the run directory could not be written; the message names it and the way out."""

    def __str__(self) -> str:
        return str(self.strerror)  # the message alone, without OSError's "[Errno N]"


__all__ = ["BackendError", "BlackboxVPError", "BudgetExhausted", "CodecError", "ConfigurationError",
           "DirectoryInUse", "RetryableError", "RunDirectoryError", "ScoresError"]
