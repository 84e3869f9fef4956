"""experiments/share_recovered.py: the share of the white-box gain, and paired differences, from a results.csv."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "experiments" / "share_recovered.py"
spec = importlib.util.spec_from_file_location("share_recovered", SCRIPT)
share_recovered = importlib.util.module_from_spec(spec)
spec.loader.exec_module(share_recovered)


def write(path: Path, rows: list[tuple]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "kind", "budget", "seed", "mapping", "test_accuracy", "baseline_test_accuracy"])
        writer.writerows(rows)
    return path


def test_the_share_is_the_methods_gain_over_grey_as_a_part_of_the_ceilings(tmp_path):
    rows = [("whitebox + head", "white-box", 20000, s, "linear", 0.95, 0.85) for s in (0, 1)]
    rows += [("shadow (ours)", "black-box", 5000, 0, "linear", 0.93, 0.85), ("shadow (ours)", "black-box", 5000, 1,
                                                                               "linear", 0.91, 0.85)]
    rows += [("cma + head", "black-box", 5000, 0, "linear", 0.86, 0.85), ("cma + head", "black-box", 5000, 1,
                                                                         "linear", 0.87, 0.85)]
    rows += [("whitebox, frequency", "white-box", 20000, 0, "frequency", 0.80, 0.20),
             ("shadow, frequency", "black-box", 5000, 0, "frequency", 0.40, 0.20)]
    lines = share_recovered.table(share_recovered.read(write(tmp_path / "r.csv", rows)), ["whitebox + head"],
                                  "whitebox, frequency", "cma + head")
    shadow = next(line for line in lines if "| shadow (ours) |" in line)
    assert "| 70% |" in shadow  # (0.92 - 0.85) / (0.95 - 0.85)
    assert "+0.055 ± 0.030" in shadow  # differences 0.07 and 0.04: mean 0.055, SE 0.015
    assert "| 0.50 x |" in next(line for line in lines if "| shadow, frequency |" in line)
    assert "| 15% |" in next(line for line in lines if "| cma + head |" in line)  # (0.865 - 0.85) / 0.1


def test_the_ceilings_may_come_from_another_results_file(tmp_path):
    """A top-5-only target gives no gradients: its runs take the ceilings of the full-score target's grid."""
    ceilings = share_recovered.read(write(tmp_path / "full.csv", [("whitebox + head", "white-box", 20000, 0, "linear",
                                                                    0.95, 0.85)]))
    top5 = share_recovered.read(write(tmp_path / "top5.csv", [("shadow (ours)", "black-box", 5000, 0, "linear", 0.90,
                                                                0.80)]))
    assert "| — |" in next(line for line in share_recovered.table(top5, ["whitebox + head"], "whitebox, frequency",
                                                                   "cma + head") if "shadow" in line)
    line = next(line for line in share_recovered.table(top5, ["whitebox + head"], "whitebox, frequency", "cma + head",
                                                       ceilings) if "shadow" in line)
    assert "| 0.950 | 67% |" in line  # (0.90 - 0.80) / (0.95 - 0.80): each run's own grey + head


def test_with_two_ceilings_each_seed_takes_the_one_best_on_validation_and_the_first_on_ties(tmp_path):
    path = tmp_path / "r.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "kind", "budget", "seed", "mapping", "test_accuracy", "val_accuracy",
                         "baseline_test_accuracy"])
        writer.writerows([("whitebox + head", "white-box", 20000, 0, "linear", 0.95, 0.90, 0.85),
                          ("whitebox + head, lr 0.2", "white-box", 20000, 0, "linear", 0.91, 0.94, 0.85),
                          ("whitebox + head", "white-box", 20000, 1, "linear", 0.93, 0.92, 0.85),
                          ("whitebox + head, lr 0.2", "white-box", 20000, 1, "linear", 0.99, 0.92, 0.85),
                          ("whitebox + head, lr 0.2", "white-box", 5000, 1, "linear", 0.99, 0.99, 0.85),
                          ("shadow (ours)", "black-box", 5000, 0, "linear", 0.89, 0.90, 0.85),
                          ("shadow (ours)", "black-box", 5000, 1, "linear", 0.89, 0.90, 0.85)])
    rows = share_recovered.read(path)
    chosen = share_recovered.best_on_validation(rows, ["whitebox + head", "whitebox + head, lr 0.2"])
    assert {seed: row["test_accuracy"] for seed, row in chosen.items()} == {0: 0.91, 1: 0.93}  # the 5,000 cell: no
    line = next(line for line in share_recovered.table(rows, ["whitebox + head", "whitebox + head, lr 0.2"],
                                                       "whitebox, frequency", "cma + head") if "shadow" in line)
    assert "| 0.920 | 57% |" in line  # (0.89 - 0.85) / (0.92 - 0.85)
