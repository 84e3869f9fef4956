"""An experiment config (``bbvp experiment CONFIG.toml``): its grid parsed and checked, and the cells it names.

See :mod:`blackbox_vp.experiment` for the format.
"""

from __future__ import annotations

import itertools
import json
import re
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path

from backends.errors import ConfigurationError
from blackbox_vp.config import RunConfig, setting_types
from blackbox_vp.optimizers import OPTIMIZERS

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
FIELD_TYPES = setting_types()


def _slug(value: object) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", str(value).lower()).strip("-")


def unique(values: typing.Iterable) -> list:
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
        if self.config.out is None:
            raise RuntimeError(f"cell {self.name}: every cell's config has its directory (Experiment.cells sets out)")
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
