"""`bbvp experiment CONFIG.toml`: a grid of ordinary runs described in TOML, resumable, summarized.

A config gives the seeds and budgets, the settings in ``[grid]`` (any RunConfig field; a list is
an axis, crossed with every other axis) and optional ``[methods.NAME]`` tables, each a named
bundle of settings::

    name = "digits"
    seeds = [0, 1, 2]
    budgets = [5000, 20000]

    [grid]
    backend = "reference"
    data = ["digits", "squares"]

    [methods."cma + head"]
    optimizer = "cma"
    mapping = "linear"

Every cell (method x axes x budget x seed) is one :func:`blackbox_vp.run.optimize` run in its own
run directory ``OUT/cells/<name>``. Calling again skips the cells whose ``result.json`` says
finished, resumes those with a checkpoint (interrupted or crashed) and runs the others; Ctrl-C
(or SIGTERM) stops the running cells after their step. The outputs are ``results.csv`` (one row
per finished cell), ``summary.md`` (mean and standard deviation over seeds) and ``curves.png``
(test accuracy versus images used).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from backends.errors import ConfigurationError
from blackbox_vp.cell import run_cell
from blackbox_vp.directory_lock import EXPERIMENT_LOCK, hold_directory
from blackbox_vp.experiment_config import Cell, Experiment, default_out, load_experiment
from blackbox_vp.experiment_report import write_outputs
from blackbox_vp.experiment_results import check_cells_match, collect, is_finished, recorded


@dataclass
class Outcome:
    """What one call of :func:`run_experiment` did, by cell name."""

    ran: list[str]
    skipped: list[str]
    failed: dict[str, str]  # cell name -> error
    interrupted: list[str] = field(default_factory=list)  # stopped by Ctrl-C, checkpoint kept

    @property
    def ended(self) -> int:
        """Cells that ran in this call, to the end or not."""
        return len(self.ran) + len(self.failed) + len(self.interrupted)


class ExperimentInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped the experiment; ``outcome`` says which cells ran, failed or were stopped."""

    def __init__(self, outcome: Outcome, todo: int):
        super().__init__(f"stopped; of {todo} cells to run, {len(outcome.ran)} finished, {len(outcome.failed)} "
                         f"failed, {len(outcome.interrupted)} interrupted (checkpoints kept), {todo - outcome.ended} not "
                         "started: run the same command again to resume the interrupted cells and run the rest")
        self.outcome = outcome


def _check_ray() -> None:
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise ConfigurationError("--ray needs Ray, an optional extra: pip install 'blackbox-vp[ray]'")


def run_experiment(experiment: Experiment, out: Path, jobs: int = 1, device: str = "cpu", ray: str | None = None,
                   ray_cpus: int = 1, threads: int | None = None, keep_recorded: bool = False) -> Outcome:
    """Run the unfinished cells (``jobs`` at a time, ``threads`` torch threads each: by default the cores
    shared out), then write results.csv, summary.md and curves.png. ``keep_recorded``: the cells that
    ``out/results.csv`` records count as finished where their directories are gone (:func:`recorded`).

    ``ray``: run the cells as Ray tasks instead, on the cluster at that address (``"auto"``,
    ``"ray://head:10001"``, or ``"local"`` for a Ray started on this machine), ``ray_cpus`` CPUs each.
    """
    import torch

    if jobs < 1:
        raise ConfigurationError(f"--jobs must be at least 1, got {jobs}")
    if threads is not None and threads < 1:
        raise ConfigurationError(f"--threads must be at least 1, got {threads}")
    if ray is not None:
        _check_ray()
        if ray_cpus < 1:
            raise ConfigurationError(f"--ray-cpus must be at least 1, got {ray_cpus}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigurationError(f"--device {device}: no CUDA GPU is visible here; use --device cpu")
    out = Path(out)
    with hold_directory(out, EXPERIMENT_LOCK):  # one experiment at a time in --out
        cells = experiment.cells(out, device)
        check_cells_match(cells)
        done = recorded(cells, out) if keep_recorded else {}
        todo = [cell for cell in cells if not is_finished(cell) and cell.name not in done]
        outcome = Outcome(ran=[], skipped=[cell.name for cell in cells if cell not in todo], failed={})
        threads = ray_cpus if ray is not None else threads or max(1, (os.cpu_count() or 1) // jobs)
        (out / "experiment.toml").write_text(experiment.path.read_text(encoding="utf-8"), encoding="utf-8")
        how = f"as Ray tasks on {ray}" if ray is not None else f"{jobs} at a time"
        print(f"{experiment.name}: {len(cells)} cells, {len(outcome.skipped)} finished, {len(todo)} to run "
              f"({how}, {threads} torch threads each) in {out}", flush=True)

        interrupted_here = False
        try:
            for cell, run, error in _iter_cells(todo, jobs, threads, ray, ray_cpus):
                if error is None:
                    assert run is not None, "a cell that ends without an error yields its result"
                    outcome.ran.append(cell.name)
                    what = (f"test {run['test_accuracy']:.3f}, validation {run['val_accuracy']:.3f}, "
                            f"{run['queries_used']} images, {run['seconds']:.0f} s")
                elif isinstance(error, KeyboardInterrupt):
                    outcome.interrupted.append(cell.name)
                    what = "stopped; its checkpoint is kept"
                else:
                    outcome.failed[cell.name] = f"{type(error).__name__}: {error}"
                    what = f"failed: {outcome.failed[cell.name]}"
                print(f"[{outcome.ended}/{len(todo)}] {cell.name}: {what}", flush=True,
                      file=sys.stdout if error is None else sys.stderr)
        except KeyboardInterrupt:  # Ctrl-C in this process itself (Ray cells are cancelled, their checkpoints kept)
            interrupted_here = True
        write_outputs(experiment, cells, collect(cells, done), out, jobs, device, ray, ray_cpus)
        if outcome.interrupted or interrupted_here:
            raise ExperimentInterrupted(outcome, len(todo))
        return outcome


def _iter_cells(todo: list[Cell], jobs: int, threads: int, ray: str | None,
                ray_cpus: int) -> Iterator[tuple[Cell, dict | None, BaseException | None]]:
    """``(cell, result, None)`` or ``(cell, None, error)`` as each cell ends: on Ray, in ``jobs`` worker
    processes, or one after the other in this process, where Ctrl-C stops the running cell and the rest."""
    if not todo:
        return
    if ray is not None:
        from blackbox_vp.ray_runner import iter_cells_on_ray

        yield from iter_cells_on_ray(todo, None if ray == "local" else ray, num_cpus=ray_cpus, threads=threads)
    elif jobs > 1:
        from blackbox_vp.process_runner import iter_cells_in_processes

        yield from iter_cells_in_processes(todo, jobs, threads)
    else:
        for cell in todo:
            try:
                result = run_cell(cell.config, threads)
            except KeyboardInterrupt as error:
                yield cell, None, error
                return
            except Exception as error:  # one failed cell must not stop the others
                yield cell, None, error
            else:
                yield cell, result, None


def add_experiment_parser(subparsers: argparse._SubParsersAction) -> None:
    """The `bbvp experiment` subcommand."""
    parser = subparsers.add_parser("experiment", help="run a grid of runs described in a TOML file (resumable); "
                                   "writes results.csv, summary.md and curves.png", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path, help="experiment TOML file")
    parser.add_argument("--out", type=Path, help="output directory (default: experiments/results/<config stem> for "
                        "a config in experiments/configs, else results/<config stem> beside the config)")
    parser.add_argument("--jobs", type=int, default=1, help="cells run at once, in separate processes (default: 1)")
    parser.add_argument("--device", default="cpu", help="torch device of local backends: cpu or cuda (default: cpu)")
    parser.add_argument("--threads", type=int, metavar="N", help="torch threads of each cell (default: the cores "
                        "divided by --jobs); e.g. 1 for two experiments side by side on 2 cores")
    parser.add_argument("--ray", metavar="ADDRESS", help="run the cells as Ray tasks (instead of --jobs) on the "
                        "cluster at ADDRESS: auto, ray://head:10001, or local for a Ray on this machine; needs "
                        "pip install 'blackbox-vp[ray]' and run directories that every node sees")
    parser.add_argument("--ray-cpus", type=int, default=1, metavar="N",
                        help="with --ray: CPUs each cell reserves, and its torch threads (default: 1)")
    parser.add_argument("--keep-recorded", action="store_true",
                        help="count the cells that OUT/results.csv records as finished where their run directories "
                        "are gone (the cells are not committed, the table is): go on from committed results in a "
                        "fresh checkout without running them again")
    parser.add_argument("--report-only", action="store_true",
                        help="run no cell: write results.csv, summary.md and curves.png from the cells finished "
                        "so far (e.g. while the grid runs elsewhere, or after Ctrl-C)")


def report_experiment(experiment: Experiment, out: Path, jobs: int = 1, device: str = "cpu", ray: str | None = None,
                      ray_cpus: int = 1, keep_recorded: bool = False) -> int:
    """Write the outputs from the cells finished so far, running none; 0 when every cell is finished."""
    if not (out / "cells").is_dir() and not (keep_recorded and (out / "results.csv").exists()):
        raise ConfigurationError(f"{out}: no cells/ folder, so no cell of {experiment.path} has run there yet; run "
                                 "the experiment first, or give the --out it ran with (--keep-recorded: or the "
                                 "folder of its results.csv)")
    cells = experiment.cells(out, device)
    check_cells_match(cells)
    (out / "experiment.toml").write_text(experiment.path.read_text(encoding="utf-8"), encoding="utf-8")
    results = collect(cells, recorded(cells, out) if keep_recorded else None)
    write_outputs(experiment, cells, results, out, jobs, device, ray, ray_cpus)
    finished = len(results)
    print(f"{experiment.name}: {finished} of {len(cells)} cells finished, none run; outputs in {out.resolve()}: "
          "results.csv, summary.md, curves.png")
    return 0 if finished == len(cells) else 1


def run_experiment_command(args: argparse.Namespace) -> int:
    """`bbvp experiment`: 0 when every cell finished, 1 when some failed (rerun to retry them), 130 when stopped."""
    experiment = load_experiment(args.config)
    out = args.out or default_out(args.config)
    if args.report_only:
        return report_experiment(experiment, Path(out), jobs=args.jobs, device=args.device, ray=args.ray,
                                 ray_cpus=args.ray_cpus, keep_recorded=args.keep_recorded)
    try:
        outcome = run_experiment(experiment, out, jobs=args.jobs, device=args.device, ray=args.ray,
                                 ray_cpus=args.ray_cpus, threads=args.threads, keep_recorded=args.keep_recorded)
    except ExperimentInterrupted as stopped:
        print(f"bbvp experiment: {stopped}", file=sys.stderr)
        return 130
    print(f"outputs in {Path(out).resolve()}: results.csv, summary.md, curves.png")
    if outcome.failed:
        print(f"{len(outcome.failed)} cells failed; rerun the same command to retry them", file=sys.stderr)
        return 1
    return 0
