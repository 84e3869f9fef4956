"""An experiment's outputs: results.csv, summary.md and curves.png from its finished cells."""

from __future__ import annotations

import csv
import textwrap
from pathlib import Path

from blackbox_vp.experiment_config import Cell, Experiment, unique
from blackbox_vp.experiment_results import CellResult, SummaryRow, csv_rows, joined, summarize


def _mean_sd(mean: float, sd: float | None) -> str:
    return f"{mean:.3f}" if sd is None else f"{mean:.3f} ± {sd:.3f}"


def summary_markdown(experiment: Experiment, cells: list[Cell], results: list[CellResult], rows: list[SummaryRow],
                     command: str) -> str:
    """summary.md: how it was run, how to read it, then one table per panel."""
    lines = [f"# {experiment.name}", ""] + ([experiment.description, ""] if experiment.description else []) + [
        f"Command: `{command}` (config copied to `experiment.toml`); {len(results)} of {len(cells)} cells finished, "
        "each a run directory under `cells/` (`result.json`, `prompt.json`, `prompt.png`); one row per cell in "
        "`results.csv`.  ",
        f"Machines: {' | '.join(unique(joined(r.result['machine']) for r in results))}  ",
        f"Versions: {' | '.join(unique(joined(r.result['versions']) for r in results))}", "",
        "Accuracies are the mean ± sample standard deviation over seeds (the last column counts them). Each run "
        "selects its prompt and output mapping on the validation split only and scores the test split once, at "
        "the end; nothing here is chosen on the test split. **Bold**: the highest mean test accuracy among the "
        "black-box methods at that budget. White-box rows are the reference with gradients through the local "
        "model (forward passes count against the same budget). \"no prompt (mapping)\" rows: the grey initial "
        "prompt with that output mapping, fitted on each run's own paid-for images. Seconds are each cell's wall "
        "time, averaged: compare them only between rows of the same machine (the last column but one).", ""]
    if rows and min(row.seeds for row in rows) < 3:
        lines += ["Some rows have fewer than 3 seeds: their spread is not a reliable estimate.", ""]
    for panel in unique(row.panel for row in rows):
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

    panels = unique(row.panel for row in rows) or [""]
    labels = unique(row.label for row in rows)
    tab20 = colormaps["tab20"]
    colors = {label: tab20((2 * i) % 20 + (i // 10) % 2) for i, label in enumerate(labels)}  # dark shades first
    figure = Figure(figsize=(7 * len(panels), 5), layout="constrained")
    for ax, panel in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
        here = [row for row in rows if row.panel == panel]
        for label in unique(row.label for row in here):
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


def write_outputs(experiment: Experiment, cells: list[Cell], results: list[CellResult], out: Path, jobs: int,
                  device: str, ray: str | None = None, ray_cpus: int = 1) -> None:
    """results.csv, summary.md and curves.png from the finished cells' ``results`` (:func:`collect`)."""
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
