"""Compare every optimizer, the white-box reference and the no-prompt baselines under equal budgets.

Each cell is one ordinary run (``blackbox_vp.optimize``); the table gives the mean and standard
deviation of test accuracy over seeds, images used, wall time and the machine. Model selection uses
the validation split only.

    python experiments/compare_optimizers.py --preset cpu    # sized for a 2-core CPU
    python experiments/compare_optimizers.py --preset full   # the issue's grid; use a GPU (--device cuda)
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from blackbox_vp import RunConfig, optimize

# method name -> RunConfig overrides. Peers run as their papers do (frequency mapping); "+head" rows
# give the same optimizer the learned linear head, so the output side is compared fairly too.
METHODS: dict[str, dict] = {
    "guided (ours)": {"optimizer": "guided", "mapping": "linear"},
    "whitebox + head": {"optimizer": "whitebox", "mapping": "linear", "parameterization": "full"},
    "whitebox": {"optimizer": "whitebox", "mapping": "frequency", "parameterization": "full"},
    "cma": {"optimizer": "cma", "mapping": "frequency"},
    "cma + head": {"optimizer": "cma", "mapping": "linear"},
    "diag-cma": {"optimizer": "diag-cma", "mapping": "frequency", "grid": 16},
    "spsa": {"optimizer": "spsa", "mapping": "frequency"},
    "spsa-gc": {"optimizer": "spsa-gc", "mapping": "frequency"},
    "rge": {"optimizer": "rge", "mapping": "frequency"},
    "nes": {"optimizer": "nes", "mapping": "frequency"},
}
PRESETS = {
    "full": {"budgets": [5000, 20000, 50000], "seeds": [0, 1, 2], "methods": list(METHODS),
             "split": {"train": 1000, "val": 200, "test": None}},
    "cpu": {"budgets": [3000], "seeds": [0], "methods": ["guided (ours)", "cma", "cma + head", "spsa-gc", "rge"],
            "split": {"train": 1000, "val": 100, "test": 300}},
}


def machine() -> str:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
    return f"{platform.node()} {platform.machine()} {device}, {torch.get_num_threads()} torch threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="grid size (default: cpu)")
    parser.add_argument("--data", default="digits", help="task (default: digits)")
    parser.add_argument("--methods", nargs="*", help=f"subset of: {', '.join(METHODS)}")
    parser.add_argument("--budgets", nargs="*", type=int, help="override the preset's budgets")
    parser.add_argument("--seeds", nargs="*", type=int, help="override the preset's seeds")
    parser.add_argument("--device", default="cpu", help="torch device of the local model (default: cpu)")
    parser.add_argument("--out", type=Path, default=Path("experiments/results"), help="where the table goes")
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    methods, budgets, seeds = args.methods or preset["methods"], args.budgets or preset["budgets"], \
        args.seeds or preset["seeds"]
    stem = f"compare-{args.data}-{args.preset}"
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for budget in budgets:
        for method in methods:
            for seed in seeds:
                config = RunConfig(data=args.data, budget=budget, seed=seed, device=args.device, quiet=True,
                                   **preset["split"], **METHODS[method])
                started = time.perf_counter()
                result = optimize(config)
                rows.append({"method": method, "budget": budget, "seed": seed, "test_accuracy": result.test_accuracy,
                             "val_accuracy": result.val_accuracy, "baseline_test_accuracy": result.baseline_test_accuracy,
                             "queries_used": result.queries_used, "seconds": round(time.perf_counter() - started, 1)})
                print(json.dumps(rows[-1]), flush=True)
                with (args.out / f"{stem}.csv").open("w", newline="") as handle:
                    writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                    writer.writeheader()
                    writer.writerows(rows)
    write_table(args, rows, args.out / f"{stem}.md")


def write_table(args: argparse.Namespace, rows: list[dict], path: Path) -> None:
    lines = [f"# {args.data}: test accuracy by method and budget", "",
             f"Command: `python experiments/compare_optimizers.py {' '.join(f'--{k} {v}' for k, v in vars(args).items() if v and k not in ('out',))}`  ",
             f"Machine: {machine()}", "",
             "| method | budget | test accuracy (mean ± sd) | no-prompt, same mapping | images used | seconds | seeds |",
             "|---|---|---|---|---|---|---|"]
    for (method, budget) in dict.fromkeys((r["method"], r["budget"]) for r in rows):
        cell = [r for r in rows if r["method"] == method and r["budget"] == budget]
        accuracies = [r["test_accuracy"] for r in cell]
        spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
        baseline = statistics.mean(r["baseline_test_accuracy"] for r in cell)
        lines.append(f"| {method} | {budget} | {statistics.mean(accuracies):.3f} ± {spread:.3f} | {baseline:.3f} | "
                     f"{max(r['queries_used'] for r in cell)} | {statistics.mean(r['seconds'] for r in cell):.0f} | "
                     f"{len(cell)} |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(path.read_text())


if __name__ == "__main__":
    main()
