"""The checkpoint: a run's whole state, pickled, replaced atomically (temp file, fsync, rename).

A crash at any moment leaves either the previous checkpoint or the new one, never a torn file.
Written after every optimization step: a 768-dimensional CMA-ES state pickles to 11 MB in about
20 ms and is on disk in 20-50 ms more, against seconds per step for a real model (736 images), so
every step is cheap enough and a crash loses at most the step in flight.

Pickle runs code when loaded: resume only runs you made yourself.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

from backends.errors import ConfigurationError
from blackbox_vp.disk import replace_atomically

FORMAT = "blackbox-vp/checkpoint/5"  # 5: the white-box moved to optimizers/whitebox.py, and its pickles name it
CRASH_AT_CHECKPOINT = "BBVP_CRASH_AT_CHECKPOINT"  # fault injection for tests: die after this process's k-th save
_saves: dict[str, Any] = {"armed": None, "count": 0}  # saves since the variable took its value, in this process


def save_checkpoint(path: Path, state: object) -> None:
    """Replace ``path`` with ``state``; the old file stays whole until the new one is on disk.

    A write that fails (a full disk) removes its temporary file and raises
    :class:`~blackbox_vp.disk.RunDirectoryError`; the last good checkpoint stays.
    """
    replace_atomically(path, pickle.dumps({"format": FORMAT, "state": state}, protocol=pickle.HIGHEST_PROTOCOL),
                       "checkpoint")
    _crash_if_asked()


def _crash_if_asked() -> None:
    """With ``BBVP_CRASH_AT_CHECKPOINT=k`` the process dies (``os._exit``, as under SIGKILL) right after the k-th
    checkpoint it wrote since the variable was set: the tests kill a run in its local phases this way, where
    no query is sent."""
    armed = os.environ.get(CRASH_AT_CHECKPOINT)
    if armed != _saves["armed"]:
        _saves["armed"], _saves["count"] = armed, 0
    _saves["count"] += 1
    if armed == str(_saves["count"]):
        os._exit(137)


def load_checkpoint(path: Path) -> Any:
    """The state saved by :func:`save_checkpoint`; a clear error if the file is not one."""
    try:
        with open(path, "rb") as file:
            document = pickle.load(file)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as error:
        raise ConfigurationError(f"cannot read checkpoint {path}: {error}") from error
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ConfigurationError(f"{path} is not a blackbox-vp checkpoint of this version (expected format {FORMAT!r})")
    return document["state"]
