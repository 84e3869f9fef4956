"""An experiment's finished cells: read back (from their run directories, or the rows a committed results.csv
records), checked against the config, and summarized over seeds."""

from __future__ import annotations

import csv
import statistics
import tomllib
from dataclasses import dataclass
from pathlib import Path

from backends.errors import ConfigurationError
from blackbox_vp.config import RunConfig
from blackbox_vp.experiment_config import Cell, Experiment, unique
from blackbox_vp.run_directory import RunDirectory

BASELINE_KEYS = ("mapping", "prompt", "placement", "width", "patch", "jpeg_quality", "mapping_images", "train",
                 "val", "test")  # what the no-prompt baseline depends on, besides panel, budget and seed
NOT_COMPARED_ON_RESUME = ("out", "quiet", "device")
CSV_SETTINGS = ("backend", "data", "prompt", "mapping", "optimizer")


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
class CellResult:
    """A finished cell and its result.json."""

    cell: Cell
    result: dict


def collect(cells: list[Cell], done: dict[str, dict] | None = None) -> list[CellResult]:
    """The finished cells, in grid order: their run directories, else the results ``done`` holds for them (the
    rows of a committed results.csv, :func:`recorded`)."""
    done = done or {}
    return [CellResult(cell, RunDirectory(cell.dir).read_result() if is_finished(cell) else done[cell.name])
            for cell in cells if is_finished(cell) or cell.name in done]


def joined(values: dict) -> str:
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
             "seconds": r.result["seconds"], "machine": joined(r.result["machine"]),
             "versions": joined(r.result["versions"])} for r in results]


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
    for panel in unique(r.cell.panel for r in results):
        for budget in sorted({r.cell.budget for r in results if r.cell.panel == panel}):
            here = [r for r in results if r.cell.panel == panel and r.cell.budget == budget]
            block = []
            for kind in ("black-box", "white-box"):
                for label in unique(r.cell.method for r in here if r.cell.kind == kind):
                    group = [r for r in here if r.cell.method == label]
                    block.append(_summary_row(panel, budget, label, kind, [r.result["test_accuracy"] for r in group],
                                              [r.result["val_accuracy"] for r in group],
                                              statistics.mean(r.result["queries_used"] for r in group),
                                              statistics.mean(r.result["seconds"] for r in group),
                                              ", ".join(unique(_device_name(r.result) for r in group))))
            block += _baseline_rows(panel, budget, here)
            best = max((row.test_mean for row in block if row.kind == "black-box"), default=None)
            for row in block:
                row.best = row.kind == "black-box" and row.test_mean == best
            rows += block
    return rows
