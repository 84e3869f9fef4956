"""Writing a run directory: every failed write (a full disk, a file size limit, a read-only or missing
directory) becomes one :class:`RunDirectoryError` that names the file and says what to do.

What is on disk stays good: the checkpoint is replaced atomically (:mod:`blackbox_vp.checkpoint`), so a
write that fails half-way leaves the last good one, and a journal line that could not be written was
never followed by its query.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class RunDirectoryError(OSError):
    """A file of the run directory could not be written; the message names it and the way out."""

    def __str__(self) -> str:
        return str(self.strerror)  # the message alone, without OSError's "[Errno N]"


@contextmanager
def writing(path: Path, what: str) -> Iterator[None]:
    """Turn an OSError of the block, which writes ``what`` at ``path``, into a :class:`RunDirectoryError`."""
    try:
        yield
    except RunDirectoryError:
        raise
    except OSError as error:
        reason = error.strerror or str(error)
        raise RunDirectoryError(error.errno, f"cannot write {what} {path}: {reason}; free space on that disk, or "
                                "make the directory writable, or choose another --out") from error
