"""Experiment cells in worker processes on this machine (``bbvp experiment --jobs N``), and how a stop reaches them.

Each cell is one :func:`blackbox_vp.cell.run_cell` call in a worker process. The workers run in
process groups of their own, so a Ctrl-C at the terminal (or a SIGINT or SIGTERM sent to the experiment's
process alone, as ``kill`` and job schedulers do) reaches only the experiment. It passes each one on to
the running cells as a Ctrl-C, once: the first stops every running cell after its step, with its
checkpoint and an ``interrupted`` result, a second stops them at once (the last checkpoint stays valid).
Cells not yet started stay unstarted. Running the experiment again resumes the interrupted cells.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from blackbox_vp.cell import run_cell
from blackbox_vp.stop import StopSignals

_stop_requested: Any = None  # in a worker: the experiment's multiprocessing Event, set when it is stopping


def _worker_started(stop_requested: Any) -> None:
    """Worker initializer: own process group; a SIGINT between cells is ignored (the stop event says it all)."""
    global _stop_requested
    _stop_requested = stop_requested
    if hasattr(os, "setpgid"):
        os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_cell_in_worker(config: Any, threads: int) -> dict | None:
    """One cell, stopped by SIGINT like a run at a terminal; None, without running, once the experiment stops."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # before the check: a stop now is never missed
    try:
        if _stop_requested.is_set():
            return None
        return run_cell(config, threads)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


class ForwardedStop(StopSignals):
    """While active (main thread only): SIGINT or SIGTERM sets ``event``, cancels the ``futures`` not started
    and sends SIGINT to each process that ``workers()`` lists."""

    def __init__(self, event: Any, futures: dict, workers: Any):
        self.event, self.futures, self.workers = event, futures, workers

    def _handle(self, signum: int, frame: object) -> None:
        if not self.event.is_set():
            print("\nbbvp experiment: stopping the running cells after their step; their checkpoints are kept "
                  "(Ctrl-C again stops them at once)", file=sys.stderr, flush=True)
        self.event.set()
        for future in self.futures:
            future.cancel()
        for process in self.workers():
            try:
                os.kill(process.pid, signal.SIGINT)
            except ProcessLookupError:  # it ended meanwhile
                pass


def iter_cells_in_processes(cells: Sequence[Any], jobs: int,
                            threads: int) -> Iterator[tuple[Any, dict | None, BaseException | None]]:
    """Run ``cells`` (each with ``.config``) ``jobs`` at a time; yields ``(cell, result, None)`` or
    ``(cell, None, error)`` as each ends. A cell stopped by Ctrl-C yields its ``KeyboardInterrupt``
    (a :class:`blackbox_vp.run.RunInterrupted` after a clean stop); cells never started yield nothing, and
    the iteration ends with ``KeyboardInterrupt``."""
    context = multiprocessing.get_context("spawn")
    others = set(multiprocessing.active_children())  # children that are not this pool's workers
    stop = context.Event()
    pool = ProcessPoolExecutor(max_workers=min(jobs, len(cells)), mp_context=context,
                               initializer=_worker_started, initargs=(stop,))
    futures: dict = {}

    def workers() -> list:
        return [process for process in multiprocessing.active_children() if process not in others]

    with ForwardedStop(stop, futures, workers):
        try:
            for cell in cells:
                if not stop.is_set():
                    futures[pool.submit(_run_cell_in_worker, cell.config, threads)] = cell
            for future in as_completed(futures):
                if future.cancelled():
                    continue
                try:
                    result = future.result()
                except BaseException as error:  # the cell's own error, or the KeyboardInterrupt that stopped it
                    yield futures[future], None, error
                else:
                    if result is not None:
                        yield futures[future], result, None
            if stop.is_set():  # even if every running cell happened to end normally: the rest did not run
                raise KeyboardInterrupt
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
