"""One process at a time in a run or experiment directory.

Two processes in one run directory would both append to its journal and both spend what is left of its
budget: together they send more images than the budget allows, and the journal ends up interleaved. A
run holds ``run.lock`` in its directory, an experiment ``experiment.lock`` in its ``--out``, for as long
as it works there. The lock is the operating system's (``flock`` on POSIX, through the ``filelock``
package), so it ends with the process that held it, even one killed with SIGKILL: no stale lock to
delete by hand. The empty lock file stays behind and is harmless.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from backends.errors import DirectoryInUse
from blackbox_vp.disk import writing

RUN_LOCK, EXPERIMENT_LOCK = "run.lock", "experiment.lock"


@contextmanager
def hold_directory(directory: Path | None, lock_name: str) -> Iterator[None]:
    """Create ``directory`` if needed and hold its lock ``lock_name`` for the block (None: nothing to hold).

    Raises :class:`DirectoryInUse` at once, without waiting, if another process holds it.
    """
    if directory is None:
        yield
        return
    directory = Path(directory)
    lock = FileLock(directory / lock_name, timeout=0)
    with writing(directory, "into directory"):
        directory.mkdir(parents=True, exist_ok=True)
        try:
            lock.acquire()
        except Timeout:  # an OSError too: it must not read as a failed write
            raise DirectoryInUse(f"{directory} is in use by another process (its {lock_name} is held: a bbvp run or "
                                 "experiment is still working there); wait for it to end or stop it, then run "
                                 "this again") from None
    try:
        yield
    finally:
        lock.release()
