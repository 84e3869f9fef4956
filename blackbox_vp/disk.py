"""Writing a run directory: every failed write (a full disk, a file size limit, a read-only or missing
directory) becomes one :class:`RunDirectoryError` that names the file and says what to do.

What is on disk stays good: the checkpoint is replaced atomically (:mod:`blackbox_vp.checkpoint`), so a
write that fails half-way leaves the last good one, and a journal line that could not be written was
never followed by its query.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from backends.errors import RunDirectoryError


@contextmanager
def writing(path: Path | None, what: str) -> Iterator[None]:
    """Turn an OSError of the block, which writes ``what`` at ``path``, into a :class:`RunDirectoryError`
    (``path`` None: a journal that writes nowhere, whose block writes nothing)."""
    try:
        yield
    except RunDirectoryError:
        raise
    except OSError as error:
        reason = error.strerror or str(error)
        raise RunDirectoryError(error.errno, f"cannot write {what} {path}: {reason}; free space on that disk, or "
                                "make the directory writable, or choose another --out") from error


def replace_atomically(path: Path, data: bytes, what: str) -> None:
    """Write ``data`` to ``path`` through a temporary file, synced, then renamed over it: a reader (or a crash)
    sees the old file or the new one, never half of one. A failed write (a full disk) removes the temporary
    file, leaves the old one, and raises :class:`RunDirectoryError` naming ``what``."""
    temporary = path.with_name(path.name + ".tmp")
    with writing(path, what):
        try:
            with open(temporary, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
        except OSError:
            temporary.unlink(missing_ok=True)
            raise
        os.replace(temporary, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself reaches the disk
        finally:
            os.close(directory)
