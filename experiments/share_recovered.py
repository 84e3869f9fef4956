"""How much of the white-box prompt's gain each method recovers, from an experiment's results.csv.

    python experiments/share_recovered.py experiments/results/shadow-digits-cpu/results.csv

For every method with the linear head, per budget: the share of the ceiling's gain recovered,
(method - grey + head) / (ceiling - grey + head), where the ceiling is the white-box reference + head at
the largest budget run (trained on the target with gradients, ``--ceiling``; given more than once, say at two
learning rates, each seed's ceiling is the one best on validation), and grey + head is each
run's own no-prompt baseline; the means over the seeds that have a ceiling go into the share (the cell
says how many when some have none). Beside it, the paired difference
from ``--versus`` (cma + head by default) over the seeds both have, and twice its standard error. For
frequency-mapped methods: the ratio to the white-box frequency-mapped ceiling (``--frequency-ceiling``).
Prints a markdown table; nothing is chosen on the test split here, the runs chose on validation.
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path


def read(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for key in ("budget", "seed"):
            row[key] = int(row[key])
        for key in ("test_accuracy", "baseline_test_accuracy"):
            row[key] = float(row[key])
    return rows


def by_seed(rows: list[dict], method: str, budget: int | None = None) -> dict[int, dict]:
    chosen = [row for row in rows if row["method"] == method]
    if budget is None and chosen:
        budget = max(row["budget"] for row in chosen)
    return {row["seed"]: row for row in chosen if row["budget"] == budget}


def best_on_validation(rows: list[dict], methods: list[str]) -> dict[int, dict]:
    """Each seed's row, among ``methods`` (each at its largest budget), with the highest validation accuracy, the
    first method listed on ties: the best of a few learning rates, chosen as a run chooses, on validation only."""
    best: dict[int, dict] = {}
    for method in methods:
        for seed, row in by_seed(rows, method).items():
            if seed not in best or float(row["val_accuracy"]) > float(best[seed]["val_accuracy"]):
                best[seed] = row
    return best


def paired(a: dict[int, float], b: dict[int, float]) -> tuple[float, float | None, int]:
    """Mean difference a - b over the seeds both have, its standard error (None under 2 seeds), the seeds."""
    seeds = sorted(set(a) & set(b))
    differences = [a[s] - b[s] for s in seeds]
    if not differences:
        return float("nan"), None, 0
    error = statistics.stdev(differences) / len(differences) ** 0.5 if len(differences) > 1 else None
    return statistics.mean(differences), error, len(differences)


def table(rows: list[dict], ceilings: list[str], frequency_ceiling: str, versus: str,
          ceiling_rows: list[dict] | None = None) -> list[str]:
    """``ceilings``: the white-box + head methods, each seed's best on validation; ``ceiling_rows``: where the
    ceilings are, if not among ``rows`` (a target with no gradients: top-5 only)."""
    head_ceiling = {s: r["test_accuracy"] for s, r in best_on_validation(ceiling_rows or rows, ceilings).items()}
    frequency_top = {s: r["test_accuracy"] for s, r in by_seed(ceiling_rows or rows, frequency_ceiling).items()}
    lines = ["| budget | method | mapping | test accuracy | grey + head | ceiling | share recovered | vs "
             f"{versus} (± 2 SE) | seeds |", "|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    methods = list(dict.fromkeys(row["method"] for row in rows if row["kind"] == "black-box"))
    for budget in sorted({row["budget"] for row in rows}):
        for method in methods:
            cells = by_seed(rows, method, budget)
            if not cells:
                continue
            accuracy = {s: r["test_accuracy"] for s, r in cells.items()}
            grey = {s: r["baseline_test_accuracy"] for s, r in cells.items()}
            mapping = next(iter(cells.values()))["mapping"]
            top = head_ceiling if mapping == "linear" else frequency_top
            seeds = sorted(set(accuracy) & set(top))
            if seeds and mapping == "linear":
                gain = statistics.mean(top[s] - grey[s] for s in seeds)
                share = statistics.mean(accuracy[s] - grey[s] for s in seeds) / gain if gain > 0 else float("nan")
                shown = f"{share:.0%}" + (f" ({len(seeds)} of {len(accuracy)} seeds)" if len(seeds) < len(accuracy) else "")
            elif seeds:
                shown = f"{statistics.mean(accuracy[s] for s in seeds) / statistics.mean(top[s] for s in seeds):.2f} x"
            else:
                shown = "—"
            other = {s: r["test_accuracy"] for s, r in by_seed(rows, versus, budget).items()}
            difference, error, both = paired(accuracy, other) if method != versus else (float("nan"), None, 0)
            versus_shown = ("—" if not both else f"{difference:+.3f}" + (f" ± {2 * error:.3f}" if error is not None
                                                                          else " (1 seed)"))
            lines.append(f"| {budget} | {method} | {mapping} | {statistics.mean(accuracy.values()):.3f} | "
                         f"{statistics.mean(grey.values()):.3f} | "
                         f"{statistics.mean(top[s] for s in seeds) if seeds else float('nan'):.3f} | {shown} | "
                         f"{versus_shown} | {len(accuracy)} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, nargs="+", help="results.csv of `bbvp experiment` (one per task)")
    parser.add_argument("--ceiling", action="append", metavar="METHOD",
                        help="method label of the white-box + head ceiling (default: 'whitebox + head'); given more "
                        "than once, each seed's ceiling is the one of them best on validation")
    parser.add_argument("--frequency-ceiling", default="whitebox, frequency",
                        help="method label of the white-box frequency-mapped ceiling")
    parser.add_argument("--versus", default="cma + head", help="method the paired differences are taken against")
    parser.add_argument("--ceilings-from", type=Path, metavar="CSV",
                        help="take the ceiling rows from this results.csv (same task and seeds), for a target the "
                        "white-box reference cannot run on, e.g. a top-5-only API")
    args = parser.parse_args()
    ceilings = args.ceiling or ["whitebox + head"]
    ceiling_rows = read(args.ceilings_from) if args.ceilings_from else None
    for path in args.results:
        rows = read(path)
        print(f"## {path}" + (f" (ceilings from {args.ceilings_from})" if ceiling_rows else "") + "\n")
        if len(ceilings) > 1:
            chosen = best_on_validation(ceiling_rows or rows, ceilings)
            print("Ceilings, best on validation: " + "; ".join(
                f"seed {seed} {row['method']} (validation {float(row['val_accuracy']):.3f}, test "
                f"{row['test_accuracy']:.3f})" for seed, row in sorted(chosen.items())) + "\n")
        print("\n".join(table(rows, ceilings, args.frequency_ceiling, args.versus, ceiling_rows)) + "\n")


if __name__ == "__main__":
    main()
