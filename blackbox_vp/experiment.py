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
import csv
import itertools
import json
import os
import re
import statistics
import sys
import textwrap
import tomllib
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from backends.errors import ConfigurationError
from blackbox_vp.cell import run_cell
from blackbox_vp.config import RunConfig, setting_types
from blackbox_vp.directory_lock import EXPERIMENT_LOCK, hold_directory
from blackbox_vp.optimizers import OPTIMIZERS
from blackbox_vp.run_directory import RunDirectory

TOP_LEVEL_KEYS = ("name", "description", "seeds", "budgets", "grid", "methods")
RESERVED = {
    "seed": "list the seeds in the top-level `seeds`",
    "budget": "list the budgets in the top-level `budgets`",
    "out": "every cell writes to its own directory under --out",
    "quiet": "cells always run without a progress bar",
    "device": "pass --device on the command line",
    "jsonl": "each cell logs its steps to its own journal.jsonl",
}
PANEL_KEYS = ("backend", "data")  # axes over these get their own table and plot, never a shared ranking
BASELINE_KEYS = ("mapping", "prompt", "placement", "width", "patch", "jpeg_quality", "mapping_images", "train",
                 "val", "test")  # what the no-prompt baseline depends on, besides panel, budget and seed
NOT_COMPARED_ON_RESUME = ("out", "quiet", "device")
CSV_SETTINGS = ("backend", "data", "prompt", "mapping", "optimizer")
FIELD_TYPES = setting_types()


def _slug(value: object) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", str(value).lower()).strip("-")


def _unique(values: typing.Iterable) -> list:
    return list(dict.fromkeys(values))


def _setting(path: Path, where: str, key: str, value: object) -> object:
    """One setting checked against RunConfig: a known field, not reserved, of the field's type."""
    if key in RESERVED:
        raise ConfigurationError(f"{path}: {where}: {key!r} cannot be set here; {RESERVED[key]}")
    if key not in FIELD_TYPES:
        raise ConfigurationError(f"{path}: {where}: unknown setting {key!r}; settings are RunConfig fields: "
                         f"{', '.join(k for k in FIELD_TYPES if k not in RESERVED)}")
    kind = FIELD_TYPES[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigurationError(f"{path}: {where}: {key} must be {kind.__name__}, got {value!r}")
    return value


def _int_list(path: Path, key: str, value: object) -> list[int]:
    if (not isinstance(value, list) or not value or len(set(value)) != len(value)
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise ConfigurationError(f"{path}: {key} must be a non-empty list of distinct integers, got {value!r}")
    return value


@dataclass(frozen=True)
class Cell:
    """One run of the grid."""

    name: str  # its directory under OUT/cells
    method: str  # its row label in the summary: the method name and the non-panel axes
    kind: str  # "black-box" or "white-box"
    panel: str  # "data=squares" when backend or data is an axis, else ""
    budget: int
    seed: int
    config: RunConfig

    @property
    def dir(self) -> Path:
        return Path(self.config.out)


@dataclass
class Experiment:
    """A parsed experiment config."""

    path: Path
    name: str
    description: str
    seeds: list[int]
    budgets: list[int]
    fixed: dict[str, object]  # scalar settings of [grid]
    axes: dict[str, list]  # list settings of [grid]
    methods: dict[str, dict[str, object]]  # method name -> settings; {"": {}} when the config has none

    def cells(self, out: Path, device: str = "cpu") -> list[Cell]:
        """Every cell, by budget, then method, then axes, then seed."""
        cells = []
        for budget, (method, overrides), values, seed in itertools.product(
                self.budgets, self.methods.items(), itertools.product(*self.axes.values()), self.seeds):
            axes = dict(zip(self.axes, values))
            named = [method] if method else []
            name = "_".join([_slug(method) for method in named] + [f"{k}-{_slug(v)}" for k, v in axes.items()]
                            + [f"b{budget}", f"s{seed}"])
            config = RunConfig(**{**self.fixed, **axes, **overrides}, budget=budget, seed=seed, device=device,
                               quiet=True, out=str(out / "cells" / name))
            label = ", ".join(named + [f"{k}={v}" for k, v in axes.items() if k not in PANEL_KEYS])
            cells.append(Cell(name=name, method=label or config.optimizer, budget=budget, seed=seed, config=config,
                              kind="white-box" if _on_target_gradients(config.optimizer) else "black-box",
                              panel=", ".join(f"{k}={v}" for k, v in axes.items() if k in PANEL_KEYS)))
        names = [cell.name for cell in cells]
        if len(set(names)) != len(names):
            clash = next(n for n in names if names.count(n) > 1)
            raise ConfigurationError(f"{self.path}: two cells share the directory name {clash!r}; give the methods or axis "
                             "values names that differ in letters or digits")
        return cells


def _on_target_gradients(optimizer: str) -> bool:
    """Whether the method trains with the target's own gradients (the white-box reference)."""
    method = OPTIMIZERS.factory_of(optimizer)
    return method.needs_gradients and not method.trains_on_surrogate


def load_experiment(path: Path) -> Experiment:
    """Parse and check an experiment TOML file; errors name the file and the offending key."""
    path = Path(path)
    with path.open("rb") as handle:
        try:
            raw = tomllib.load(handle)
        except tomllib.TOMLDecodeError as error:
            raise ConfigurationError(f"{path}: not valid TOML: {error}") from error
    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            raise ConfigurationError(f"{path}: unknown top-level key {key!r}; expected: {', '.join(TOP_LEVEL_KEYS)} "
                             "(run settings go in [grid] or [methods.NAME])")
    for key in ("name", "description"):
        if not isinstance(raw.get(key, ""), str):
            raise ConfigurationError(f"{path}: {key} must be a string, got {raw[key]!r}")
    for key in ("seeds", "budgets"):
        if key not in raw:
            raise ConfigurationError(f"{path}: missing {key} (a list of integers)")
    for key in ("grid", "methods"):
        if not isinstance(raw.get(key, {}), dict):
            raise ConfigurationError(f"{path}: {key} must be a table ([{key}]), got {raw[key]!r}")
    fixed, axes = {}, {}
    for key, value in raw.get("grid", {}).items():
        if isinstance(value, list):
            if not value or len(set(map(repr, value))) != len(value):
                raise ConfigurationError(f"{path}: [grid]: {key} must be a non-empty list of distinct values")
            axes[key] = [_setting(path, "[grid]", key, v) for v in value]
        else:
            fixed[key] = _setting(path, "[grid]", key, value)
    methods = {}
    for method, settings in raw.get("methods", {}).items():
        where = f"[methods.{json.dumps(method)}]"
        if not isinstance(settings, dict):
            raise ConfigurationError(f"{path}: {where} must be a table of settings")
        if not _slug(method):
            raise ConfigurationError(f"{path}: {where}: a method name needs a letter or digit")
        for key in settings:
            if key in axes:
                raise ConfigurationError(f"{path}: {where} sets {key!r}, which [grid] lists as an axis; remove one of the two")
        methods[method] = {key: _setting(path, where, key, value) for key, value in settings.items()}
    budgets = _int_list(path, "budgets", raw["budgets"])
    if min(budgets) < 1:
        raise ConfigurationError(f"{path}: budgets must be positive numbers of images, got {budgets}")
    return Experiment(path=path, name=raw.get("name", path.stem), description=raw.get("description", ""),
                      seeds=_int_list(path, "seeds", raw["seeds"]), budgets=budgets, fixed=fixed, axes=axes,
                      methods=methods or {"": {}})


def default_out(config_path: Path) -> Path:
    """experiments/configs/X.toml -> experiments/results/X; elsewhere DIR/X.toml -> DIR/results/X."""
    folder = Path(config_path).parent
    return (folder.parent if folder.name == "configs" else folder) / "results" / Path(config_path).stem


def _settings_of(cell: Cell) -> dict | None:
    """The settings a cell's directory was run with (its config.toml, automatic sizes resolved), if any."""
    directory = RunDirectory(cell.dir)
    return tomllib.loads(directory.config.read_text(encoding="utf-8")) if directory.config.exists() else None


def is_finished(cell: Cell) -> bool:
    return RunDirectory(cell.dir).is_finished()


def _fields(joined: str) -> dict[str, str]:
    """``"key value; key value"`` (a results.csv column) back to a dict."""
    return dict(part.split(" ", 1) for part in joined.split("; ") if " " in part)


def recorded(cells: list[Cell], out: Path) -> dict[str, dict]:
    """The results, by cell name, that ``out/results.csv`` records for cells whose run directories are gone.

    The cells are not committed and the table is: so a grid goes on from its committed results in a fresh
    checkout, and these cells are neither run again nor left out of the summary. A recorded row whose
    method settings differ from the config's is refused, as a cell directory's would be.
    """
    path = out / "results.csv"
    if not path.exists():
        return {}
    by_name = {cell.name: cell for cell in cells}
    found = {}
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            cell = by_name.get(row.get("cell", ""))
            if cell is None or is_finished(cell):
                continue
            for key in CSV_SETTINGS:
                if row.get(key) and row[key] != str(getattr(cell.config, key)):
                    raise ConfigurationError(f"{path} records cell {cell.name} with {key}={row[key]!r}, but the config "
                                             f"now gives {getattr(cell.config, key)!r}; remove that row to rerun it")
            found[cell.name] = {
                "status": "finished", "test_accuracy": float(row["test_accuracy"]),
                "val_accuracy": float(row["val_accuracy"]), "baseline_test_accuracy": float(row["baseline_test_accuracy"]),
                "baseline_val_accuracy": float(row["baseline_val_accuracy"]), "queries_used": int(row["images_used"]),
                "test_queries": int(row["test_images"]), "steps": int(row["steps"]), "seconds": float(row["seconds"]),
                "machine": _fields(row["machine"]), "versions": _fields(row["versions"])}
    return found


def check_cells_match(cells: list[Cell]) -> None:
    """Refuse to reuse a cell directory that was run with other settings than the config gives now. A setting
    its config.toml lacks came after the cell ran: it ran as that setting's default does."""
    for cell in cells:
        stored = _settings_of(cell)
        if stored is None:
            continue
        for key, value in cell.config.to_dict().items():
            ran_with = stored.get(key, getattr(RunConfig, key))
            if key not in NOT_COMPARED_ON_RESUME and value is not None and ran_with != value:
                raise ConfigurationError(f"{cell.dir} was run with {key}={ran_with!r}, but the config now gives "
                                 f"{key}={value!r}; delete that directory to rerun the cell, or use another --out")


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
        write_outputs(experiment, cells, out, jobs, device, ray, ray_cpus, keep_recorded)
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


@dataclass
class CellResult:
    """A finished cell and its result.json."""

    cell: Cell
    result: dict


def collect(cells: list[Cell], out: Path | None = None) -> list[CellResult]:
    """The finished cells, in grid order: their run directories, else (with ``out``) the rows that
    ``out/results.csv`` records for them (:func:`recorded`)."""
    done = recorded(cells, out) if out is not None else {}
    return [CellResult(cell, RunDirectory(cell.dir).read_result() if is_finished(cell) else done[cell.name])
            for cell in cells if is_finished(cell) or cell.name in done]


def _joined(values: dict) -> str:
    return "; ".join(f"{key} {value}" for key, value in values.items())


def csv_rows(experiment: Experiment, results: list[CellResult]) -> list[dict]:
    """One row per finished cell: its settings, images used, accuracies, seconds, machine and versions."""
    extra_axes = [axis for axis in experiment.axes if axis not in CSV_SETTINGS]
    return [{"cell": r.cell.name, "method": r.cell.method, "kind": r.cell.kind, "budget": r.cell.budget,
             "seed": r.cell.seed, **{k: getattr(r.cell.config, k) for k in (*CSV_SETTINGS, *extra_axes)},
             "images_used": r.result["queries_used"], "test_images": r.result["test_queries"],
             "test_accuracy": r.result["test_accuracy"], "val_accuracy": r.result["val_accuracy"],
             "baseline_test_accuracy": r.result["baseline_test_accuracy"],
             "baseline_val_accuracy": r.result["baseline_val_accuracy"], "steps": r.result["steps"],
             "seconds": r.result["seconds"], "machine": _joined(r.result["machine"]),
             "versions": _joined(r.result["versions"])} for r in results]


@dataclass
class SummaryRow:
    """One row of summary.md: a method (or a no-prompt baseline) at one budget, over seeds."""

    panel: str
    budget: int
    label: str
    kind: str  # "black-box", "white-box" or "no prompt"
    seeds: int
    test_mean: float
    test_sd: float | None  # sample standard deviation; None for a single seed
    val_mean: float
    val_sd: float | None
    images: float | None  # mean images used; None for the baselines
    seconds: float | None
    machine: str | None = None  # the device names its cells ran on (cells may come from several machines)
    best: bool = False  # highest mean test accuracy among the black-box rows of its panel and budget


def _summary_row(panel: str, budget: int, label: str, kind: str, test: list[float], val: list[float],
                 images: float | None = None, seconds: float | None = None, machine: str | None = None) -> SummaryRow:
    return SummaryRow(panel=panel, budget=budget, label=label, kind=kind, seeds=len(test),
                      test_mean=statistics.mean(test), test_sd=statistics.stdev(test) if len(test) > 1 else None,
                      val_mean=statistics.mean(val), val_sd=statistics.stdev(val) if len(val) > 1 else None,
                      images=images, seconds=seconds, machine=machine)


def _device_name(result: dict) -> str:
    """The device a cell ran on, from its result's machine record: "cpu" or the GPU's name."""
    return result["machine"]["device_name"]


def _baseline_rows(panel: str, budget: int, results: list[CellResult]) -> list[SummaryRow]:
    """'no prompt (<mapping>)': one value per seed, the mean over the cells that share those settings."""
    groups: dict[tuple, dict[int, list[CellResult]]] = {}
    for r in results:
        key = tuple(getattr(r.cell.config, k) for k in BASELINE_KEYS)
        groups.setdefault(key, {}).setdefault(r.cell.seed, []).append(r)
    varying = [i for i in range(1, len(BASELINE_KEYS)) if len({key[i] for key in groups}) > 1]
    rows = []
    for key, by_seed in groups.items():
        label = f"no prompt ({', '.join([key[0]] + [f'{BASELINE_KEYS[i]}={key[i]}' for i in varying])})"
        test = [statistics.mean(r.result["baseline_test_accuracy"] for r in cells) for cells in by_seed.values()]
        val = [statistics.mean(r.result["baseline_val_accuracy"] for r in cells) for cells in by_seed.values()]
        rows.append(_summary_row(panel, budget, label, "no prompt", test, val))
    return rows


def summarize(results: list[CellResult]) -> list[SummaryRow]:
    """Mean and spread over seeds per panel, budget and method; white-box and no-prompt rows after the methods."""
    rows = []
    for panel in _unique(r.cell.panel for r in results):
        for budget in sorted({r.cell.budget for r in results if r.cell.panel == panel}):
            here = [r for r in results if r.cell.panel == panel and r.cell.budget == budget]
            block = []
            for kind in ("black-box", "white-box"):
                for label in _unique(r.cell.method for r in here if r.cell.kind == kind):
                    group = [r for r in here if r.cell.method == label]
                    block.append(_summary_row(panel, budget, label, kind, [r.result["test_accuracy"] for r in group],
                                              [r.result["val_accuracy"] for r in group],
                                              statistics.mean(r.result["queries_used"] for r in group),
                                              statistics.mean(r.result["seconds"] for r in group),
                                              ", ".join(_unique(_device_name(r.result) for r in group))))
            block += _baseline_rows(panel, budget, here)
            best = max((row.test_mean for row in block if row.kind == "black-box"), default=None)
            for row in block:
                row.best = row.kind == "black-box" and row.test_mean == best
            rows += block
    return rows


def _mean_sd(mean: float, sd: float | None) -> str:
    return f"{mean:.3f}" if sd is None else f"{mean:.3f} ± {sd:.3f}"


def summary_markdown(experiment: Experiment, cells: list[Cell], results: list[CellResult], rows: list[SummaryRow],
                     command: str) -> str:
    """summary.md: how it was run, how to read it, then one table per panel."""
    lines = [f"# {experiment.name}", ""] + ([experiment.description, ""] if experiment.description else []) + [
        f"Command: `{command}` (config copied to `experiment.toml`); {len(results)} of {len(cells)} cells finished, "
        "each a run directory under `cells/` (`result.json`, `prompt.json`, `prompt.png`); one row per cell in "
        "`results.csv`.  ",
        f"Machines: {' | '.join(_unique(_joined(r.result['machine']) for r in results))}  ",
        f"Versions: {' | '.join(_unique(_joined(r.result['versions']) for r in results))}", "",
        "Accuracies are the mean ± sample standard deviation over seeds (the last column counts them). Each run "
        "selects its prompt and output mapping on the validation split only and scores the test split once, at "
        "the end; nothing here is chosen on the test split. **Bold**: the highest mean test accuracy among the "
        "black-box methods at that budget. White-box rows are the reference with gradients through the local "
        "model (forward passes count against the same budget). \"no prompt (mapping)\" rows: the grey initial "
        "prompt with that output mapping, fitted on each run's own paid-for images. Seconds are each cell's wall "
        "time, averaged: compare them only between rows of the same machine (the last column but one).", ""]
    if rows and min(row.seeds for row in rows) < 3:
        lines += ["Some rows have fewer than 3 seeds: their spread is not a reliable estimate.", ""]
    for panel in _unique(row.panel for row in rows):
        if panel:
            lines += [f"## {panel}", ""]
        lines += ["| budget | method | kind | test accuracy | validation accuracy | images used | seconds | machine "
                  "| seeds |", "|---:|---|---|---:|---:|---:|---:|---|---:|"]
        for row in (row for row in rows if row.panel == panel):
            bold = "**" if row.best else ""
            lines.append(f"| {row.budget} | {bold}{row.label}{bold} | {row.kind} | "
                         f"{bold}{_mean_sd(row.test_mean, row.test_sd)}{bold} | "
                         f"{_mean_sd(row.val_mean, row.val_sd)} | "
                         f"{'—' if row.images is None else f'{row.images:.0f}'} | "
                         f"{'—' if row.seconds is None else f'{row.seconds:.0f}'} | {row.machine or '—'} | "
                         f"{row.seeds} |")
        lines.append("")
    return "\n".join(lines)


def write_curves(rows: list[SummaryRow], path: Path, title: str) -> None:
    """Test accuracy versus images used (log axis), one line per method, a band of ± one sd over seeds."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    panels = _unique(row.panel for row in rows) or [""]
    labels = _unique(row.label for row in rows)
    tab20 = colormaps["tab20"]
    colors = {label: tab20((2 * i) % 20 + (i // 10) % 2) for i, label in enumerate(labels)}  # dark shades first
    figure = Figure(figsize=(7 * len(panels), 5), layout="constrained")
    for ax, panel in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
        here = [row for row in rows if row.panel == panel]
        for label in _unique(row.label for row in here):
            line = sorted((row for row in here if row.label == label), key=lambda row: row.budget)
            style = {"black-box": "-", "white-box": "--", "no prompt": ":"}[line[0].kind]
            x = [row.budget if row.images is None else row.images for row in line]
            mean = [row.test_mean for row in line]
            sd = [row.test_sd or 0.0 for row in line]
            ax.plot(x, mean, style, marker="o", color=colors[label], label=label)
            ax.fill_between(x, [m - s for m, s in zip(mean, sd)], [m + s for m, s in zip(mean, sd)],
                            color=colors[label], alpha=0.2, linewidth=0)
        ax.set_xscale("log")
        budgets = sorted({row.budget for row in here})
        ax.set_xticks(budgets, [f"{budget:,}" for budget in budgets])  # the budgets, not crowded log-minor labels
        ax.minorticks_off()
        ax.set_xlabel("images used (log scale; no-prompt rows at their budget)")
        ax.set_ylabel("test accuracy (mean ± sd over seeds)")
        ax.set_title(textwrap.fill(f"{title}, {panel}" if panel else title, 60))  # a long name stays in the figure
        ax.grid(True, which="both", alpha=0.3)
        if here:
            ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.02, 0.5))
    figure.savefig(path, dpi=120)


def write_outputs(experiment: Experiment, cells: list[Cell], out: Path, jobs: int, device: str,
                  ray: str | None = None, ray_cpus: int = 1, keep_recorded: bool = False) -> None:
    """results.csv, summary.md and curves.png from the finished cells (and the recorded ones, if kept)."""
    results = collect(cells, out if keep_recorded else None)
    rows = csv_rows(experiment, results)
    with (out / "results.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["cell"])
        writer.writeheader()
        writer.writerows(rows)
    summary = summarize(results)
    how = f"--ray {ray} --ray-cpus {ray_cpus}" if ray is not None else f"--jobs {jobs}"
    command = f"bbvp experiment {experiment.path} --out {out} {how} --device {device}"
    (out / "summary.md").write_text(summary_markdown(experiment, cells, results, summary, command), encoding="utf-8")
    write_curves(summary, out / "curves.png", experiment.name)


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
    write_outputs(experiment, cells, out, jobs, device, ray, ray_cpus, keep_recorded)
    finished = len(collect(cells, out if keep_recorded else None))
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
