"""The journal: ``journal.jsonl`` in the run directory, one JSON object per line, only ever appended.

Each line has an ``event``:

- ``start`` and ``resume`` (with the images sent before a crash that the resumed run counts);
- ``send``, written (and flushed to disk) *before* each query, with its ``id``, ``phase`` and
  ``images``: after a crash, the ``send`` lines past the checkpoint's last id are the images that
  may have been paid for and are counted again on resume;
- ``step``, one per optimization step: ``step``, ``images`` used so far, ``loss`` and
  ``train_accuracy`` (mean over the step's candidates on its minibatch), ``val_accuracy`` (null
  unless validated at this step), ``step_size``, ``seconds`` (this step) and ``elapsed`` (the run);
- ``retry`` (a query that needed retries, with their count) and ``error`` (a query that failed);
- ``http_failure``, one per failed attempt of an HTTP backend built from a ``--backend`` URL (the
  client's ``on_failure`` event: ``url``, ``attempt``, ``max_attempts``, ``images``, ``status``,
  ``error`` with the token masked, ``retry``, ``seconds``);
- ``validation_skipped``: after a resume, the images counted twice left no room for a validation;
- ``adjusted``: after a resume, a stage those images shrank or skipped (``what``, ``why``), as in result.json's
  ``adjustments``;
- ``interrupted`` and ``end``.

A step written after the last checkpoint is written again when the resumed run takes it again: the
last line of a step number is the one that counts.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from backends.base import Backend, BackendWrapper
from backends.errors import ConfigurationError
from blackbox_vp.disk import writing

PHASES = ("mapping", "optimization", "validation", "test", "surrogate")  # surrogate: the shadow method's local work
CRASH_AT_SEND = "BBVP_CRASH_AT_SEND"  # fault injection for tests: the process dies at once after that `send` line
LEARNING_PHASES = ("mapping", "optimization", "validation")  # what the budget covers


def json_safe(value: object) -> object:
    """NaN and infinities become null, numpy scalars plain numbers: the output stays strict JSON."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


class Journal:
    """Writes lines to ``path`` (None: nowhere), a new file unless ``append``; ``echo`` also gets every ``step``
    line (--jsonl)."""

    def __init__(self, path: Path | None, echo: TextIO | None = None, append: bool = False):
        self.path = path
        self.echo = echo
        with writing(path, "journal"):
            self._file = None if path is None else open(path, "a" if append else "w", encoding="utf-8")
        self._lock = threading.Lock()  # an HTTP backend's failure hook writes from its event-loop thread

    def write(self, event: str, durable: bool = False, **fields: object) -> None:
        """One line; ``durable`` waits until it is on disk (fsync), not only handed to the system. Thread-safe;
        a no-op after :meth:`close`. A failed write raises :class:`~blackbox_vp.disk.RunDirectoryError` and
        closes the journal."""
        line = json.dumps(json_safe({"event": event, **fields}))
        with self._lock, writing(self.path, "journal"):
            if self._file is not None:
                try:
                    self._file.write(line + "\n")
                    self._file.flush()
                    if durable:
                        os.fsync(self._file.fileno())
                except OSError:  # a full disk: no later line may follow a half-written one (resume cuts it)
                    file, self._file = self._file, None
                    with contextlib.suppress(OSError):
                        file.close()
                    raise
        if self.echo is not None and event == "step":
            print(line, file=self.echo, flush=True)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def read_journal(path: Path) -> list[dict]:
    """The journal's lines, after cutting a last line that a crash left half written."""
    with open(path, "rb+") as file:
        data = file.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            file.truncate(end)
    entries = []
    for number, line in enumerate(data[:end].split(b"\n"), start=1):
        if line.strip():
            try:
                entries.append(json.loads(line))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise ConfigurationError(
                    f"{path}, line {number}, is damaged ({error}: {line[:80]!r}), so the images sent after the "
                    "last checkpoint cannot be counted. Mend that line by hand (a `send` line cut short: write it "
                    "out whole, with its images, so that they are counted), or delete the run directory to start "
                    "the run again") from error
    return entries


@dataclass
class Ledger:
    """Images sent and seconds spent per phase, and the id of the last query announced in the journal.

    Part of the checkpoint. ``phase`` is the phase now running; :meth:`during` switches it.
    """

    images: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PHASES, 0))
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    phase: str = "mapping"
    last_send: int = 0
    _mark: float = field(default_factory=time.perf_counter, repr=False)

    @property
    def learning_images(self) -> int:
        """Images the budget covers: mapping, optimization and validation."""
        return sum(self.images[p] for p in LEARNING_PHASES)

    def restart_clock(self) -> None:
        """Start timing anew (a checkpoint restored in another process)."""
        self._mark = time.perf_counter()

    def _switch(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[self.phase] += now - self._mark
        self._mark, self.phase = now, phase

    @contextmanager
    def during(self, phase: str) -> Iterator[None]:
        """Book the images and seconds of the block to ``phase``."""
        previous = self.phase
        self._switch(phase)
        try:
            yield
        finally:
            self._switch(previous)

    def totals(self) -> dict[str, dict]:
        """{phase: {"images": ..., "seconds": ...}}, for result.json."""
        self._switch(self.phase)
        return {p: {"images": self.images[p], "seconds": round(self.seconds[p], 3)} for p in PHASES}

    def book_lost(self, entries: list[dict]) -> int:
        """Count the ``send`` lines past :attr:`last_send` (sent after the checkpoint); returns their images."""
        lost = 0
        for entry in entries:
            if entry.get("event") == "send" and entry["id"] > self.last_send:
                self.images[entry["phase"]] += entry["images"]
                lost += entry["images"]
        self.last_send = max([self.last_send] + [e["id"] for e in entries if e.get("event") == "send"])
        return lost


class JournaledBackend(BackendWrapper):
    """Announces every query in the journal (durably) before sending it and books it in the ledger.

    Errors from the inner backend get an ``error`` line; queries that needed retries (backends with
    ``stats()["retries"]``, such as the HTTP backend) get a ``retry`` line.
    """

    def __init__(self, inner: Backend, journal: Journal, ledger: Ledger):
        super().__init__(inner)
        self.journal = journal
        self.ledger = ledger

    def announce(self, count: int) -> None:
        """Record ``count`` images as sent in the current phase, before they are.

        With the environment variable ``BBVP_CRASH_AT_SEND`` set to an id, the process dies right after
        writing that ``send`` line (``os._exit``: no clean-up, as under SIGKILL), the query in flight: the
        tests kill a run at every query this way and resume it.
        """
        self.ledger.last_send += 1
        self.ledger.images[self.ledger.phase] += count
        self.journal.write("send", durable=True, id=self.ledger.last_send, phase=self.ledger.phase, images=count)
        if os.environ.get(CRASH_AT_SEND) == str(self.ledger.last_send):
            os._exit(137)

    def query(self, images: np.ndarray) -> np.ndarray:
        self.announce(len(images))
        retries_before = self.retries()
        try:
            scores = self.inner.query(images)
        except Exception as error:
            self.journal.write("error", phase=self.ledger.phase, images=len(images),
                               error=f"{type(error).__name__}: {error}")
            raise
        retries = self.retries()
        if retries > retries_before:
            self.journal.write("retry", phase=self.ledger.phase, retries=retries - retries_before, total=retries)
        return scores

    def retries(self) -> int:
        """Retries so far of the model below, if it reports them (0 otherwise)."""
        stats = self.unwrap().stats()
        return int(stats.get("retries", 0)) if stats else 0
