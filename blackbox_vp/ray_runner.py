"""Experiment cells as Ray tasks, for when one machine's queries per second are not enough.

Each cell is one :func:`blackbox_vp.cell.run_cell` call (``optimize``, or ``resume`` from the
cell's checkpoint when it has one) in a Ray task, so a cell on a cluster writes the same run
directory, and is resumed the same way, as with ``bbvp experiment --jobs N`` on one machine
(``bbvp experiment CONFIG --ray ADDRESS --ray-cpus N`` runs a grid's cells this way). Ray is an
optional extra (``pip install -e '.[ray]'``); this module imports it only when called.

Requirements on a real cluster: every node has this project and its dependencies installed (or
pass ``runtime_env`` in ``init``), and the run directories are on a filesystem every node sees
(NFS or similar), since a cell may be resumed on another node than the one that started it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from backends.errors import ConfigurationError
from blackbox_vp.cell import run_cell
from blackbox_vp.config import RunConfig


def _name_and_config(cell: Any) -> tuple[str, RunConfig]:
    """(name, config) of an experiment ``Cell`` (``.name``, ``.config``) or of a bare ``RunConfig``."""
    config = cell if isinstance(cell, RunConfig) else cell.config
    if not config.out:
        raise ConfigurationError("a cell run on Ray needs a run directory (config.out)")
    name = getattr(cell, "name", None) or Path(config.out).name
    # absolute, so that the task finds the directory whatever its working directory
    return name, dataclasses.replace(config, out=str(Path(config.out).resolve()))


def _run_cell(config: RunConfig, threads: int) -> dict:
    return run_cell(config, threads)


def iter_cells_on_ray(cells: Iterable[Any], address: str | None = None, *, num_cpus: float = 1,
                      num_gpus: float = 0, threads: int | None = None,
                      init: dict | None = None) -> Iterator[tuple[Any, dict | None, BaseException | None]]:
    """Run ``cells`` as Ray tasks; yields ``(cell, result, None)`` or ``(cell, None, error)`` as each ends.

    ``address``: the cluster to join (``"auto"``, ``"ray://host:10001"``, ...); None joins the Ray
    already initialized in this process, else starts a local one (this machine's cores). Each task
    reserves ``num_cpus`` CPUs and ``num_gpus`` GPUs and runs torch on ``threads`` threads (default:
    ``num_cpus``, at least 1). ``init`` holds further ``ray.init`` keywords (``runtime_env``, ...).
    Ctrl-C cancels the cells not yet finished; their run directories keep their last checkpoint, so
    running the same cells again resumes them.
    """
    import ray

    started_here = False
    if not ray.is_initialized():
        ray.init(address=address, **(init or {}))
        started_here = True
    try:
        task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=0)(_run_cell)
        threads = threads or max(1, int(num_cpus))
        pending = {}
        for cell in cells:
            _, config = _name_and_config(cell)
            pending[task.remote(config, threads)] = cell
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    cell = pending.pop(ref)
                    try:
                        yield cell, ray.get(ref), None
                    except ray.exceptions.RayTaskError as error:  # the cell's own exception, with its traceback
                        yield cell, None, error.as_instanceof_cause()
                    except ray.exceptions.RayError as error:  # a worker or node died
                        yield cell, None, error
        finally:
            for ref in pending:  # Ctrl-C, or the caller stopped iterating
                ray.cancel(ref)
    finally:
        if started_here:
            ray.shutdown()


def run_cells_on_ray(cells: Iterable[Any], address: str | None = None,
                     **options: Any) -> dict[str, dict | BaseException]:
    """Run ``cells`` (experiment ``Cell`` objects or ``RunConfig`` with ``out``) on Ray; waits for all of them.

    Returns {cell name: the result of ``run_cell`` (test and validation accuracy, images used, seconds),
    or the exception that stopped the cell}. ``address`` and ``options`` are those of :func:`iter_cells_on_ray`.
    """
    outcomes: dict[str, dict | BaseException] = {}
    for cell, result, error in iter_cells_on_ray(cells, address, **options):
        outcome = result if error is None else error
        assert outcome is not None, "a cell ends with its result or the error that stopped it"
        outcomes[_name_and_config(cell)[0]] = outcome
    return outcomes
