import argparse
import csv
import json
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from blackbox_vp.experiment import add_experiment_parser, run_experiment, run_experiment_command
from blackbox_vp.experiment_config import Experiment, load_experiment
from blackbox_vp.experiment_results import collect, summarize
from blackbox_vp.journal import read_journal

TOY_GRID = """
name = "toy grid"
seeds = [0, 1, 2]
budgets = [1500]

[grid]
backend = "toy"
data = "digits"
batch_size = 8
grid = 4
train = 400
val = 60
test = 60

[methods.cma]
optimizer = "cma"
mapping = "frequency"

[methods."guided (ours)"]
optimizer = "guided"
mapping = "linear"
surrogate = "none"
"""


def write_config(folder, text: str = TOY_GRID):
    path = folder / "toy.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The toy grid run once, in two worker processes."""
    folder = tmp_path_factory.mktemp("experiment")
    experiment = load_experiment(write_config(folder))
    out = folder / "out"
    outcome = run_experiment(experiment, out, jobs=2)
    return experiment, out, outcome


def read_rows(out) -> list[dict]:
    with (out / "results.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_every_cell_runs_once_and_results_csv_has_one_row_per_cell(finished):
    experiment, out, outcome = finished
    cells = experiment.cells(out)
    assert len(cells) == 6 and not outcome.failed and not outcome.skipped
    assert sorted(outcome.ran) == sorted(cell.name for cell in cells)
    rows = read_rows(out)
    assert [row["cell"] for row in rows] == [cell.name for cell in cells]
    for row in rows:
        assert int(row["images_used"]) <= int(row["budget"]) == 1500
        assert row["machine"] and "torch" in row["versions"]
    assert {row["seed"] for row in rows} == {"0", "1", "2"}
    assert (out / "curves.png").stat().st_size > 0 and (out / "experiment.toml").exists()
    assert all((cell.dir / "prompt.json").exists() for cell in cells)  # ordinary run directories


def test_a_second_call_skips_finished_cells_and_runs_only_the_missing_one(finished):
    experiment, out, _ = finished
    cells = experiment.cells(out)
    again = run_experiment(experiment, out)
    assert again.ran == [] and sorted(again.skipped) == sorted(cell.name for cell in cells)
    kept = cells[0].dir / "result.json"
    mtime = kept.stat().st_mtime_ns
    (cells[-1].dir / "result.json").unlink()
    third = run_experiment(experiment, out)
    assert third.ran == [cells[-1].name] and len(third.skipped) == 5
    assert kept.stat().st_mtime_ns == mtime
    assert len(read_rows(out)) == 6


def test_the_command_line_reruns_a_finished_grid_without_running_a_cell(finished, capsys):
    experiment, out, _ = finished
    parser = argparse.ArgumentParser()
    add_experiment_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["experiment", str(experiment.path), "--out", str(out), "--jobs", "2"])
    assert run_experiment_command(args) == 0
    assert "6 cells, 6 finished, 0 to run" in capsys.readouterr().out


def test_cells_recorded_in_a_committed_results_csv_are_not_run_again_and_stay_in_the_summary(finished, tmp_path,
                                                                                             capsys):
    """The cells are not committed, results.csv is: a fresh checkout goes on from the table."""
    experiment, out, _ = finished
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    rows = read_rows(out)
    with (fresh / "results.csv").open("w", newline="", encoding="utf-8") as handle:  # all but the last cell
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows[:-1])
    outcome = run_experiment(experiment, fresh, keep_recorded=True)
    assert outcome.ran == [rows[-1]["cell"]] and len(outcome.skipped) == len(rows) - 1
    assert sorted(path.name for path in (fresh / "cells").iterdir()) == [rows[-1]["cell"]]
    assert [row["test_accuracy"] for row in read_rows(fresh)] == [row["test_accuracy"] for row in rows]
    def table(folder):  # the summary's rows but for their seconds (the one cell ran again here)
        rows = [line.split("|") for line in (folder / "summary.md").read_text().splitlines() if "| " in line]
        return [row[:7] + row[8:] for row in rows]

    assert table(fresh) == table(out)
    rows[0]["optimizer"] = "spsa"  # a row that no longer matches its method is refused, not mixed in
    with (fresh / "results.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(ValueError, match=f"records cell {rows[0]['cell']} with optimizer='spsa'"):
        run_experiment(experiment, fresh, keep_recorded=True)
    assert len(run_experiment(experiment, tmp_path / "again").ran) == len(rows)  # not kept unless asked


def test_report_only_writes_the_outputs_of_the_finished_cells_and_runs_none(finished, tmp_path, capsys):
    experiment, out, _ = finished
    cells = experiment.cells(out)
    partial = tmp_path / "partial"
    for cell in cells[:4]:
        shutil.copytree(cell.dir, partial / "cells" / cell.name)
    parser = argparse.ArgumentParser()
    add_experiment_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["experiment", str(experiment.path), "--out", str(partial), "--report-only"])
    assert run_experiment_command(args) == 1  # 2 cells not finished
    assert "4 of 6 cells finished, none run" in capsys.readouterr().out
    assert [row["cell"] for row in read_rows(partial)] == [cell.name for cell in cells[:4]]
    assert sorted(path.name for path in (partial / "cells").iterdir()) == sorted(cell.name for cell in cells[:4])
    assert "4 of 6 cells finished" in (partial / "summary.md").read_text(encoding="utf-8")
    assert (partial / "curves.png").stat().st_size > 0 and (partial / "experiment.toml").exists()
    args = parser.parse_args(["experiment", str(experiment.path), "--out", str(tmp_path / "none"), "--report-only"])
    with pytest.raises(ValueError, match="none.*no cells/ folder.*run the experiment first"):
        run_experiment_command(args)


def test_summary_numbers_are_the_means_of_the_rows(finished):
    experiment, out, _ = finished
    rows = read_rows(out)
    summary = summarize(collect(experiment.cells(out)))
    table = {}
    for line in (out / "summary.md").read_text(encoding="utf-8").splitlines():
        cols = [col.strip().strip("*") for col in line.split("|")[1:-1]]
        if len(cols) == 9 and cols[0].isdigit():
            table[cols[1]] = cols
    assert {row.label for row in summary} == {"cma", "guided (ours)", "no prompt (frequency)", "no prompt (linear)"}
    for row in summary:
        if row.kind == "no prompt":
            mapping = row.label.removeprefix("no prompt (").removesuffix(")")
            values = [float(r["baseline_test_accuracy"]) for r in rows if r["mapping"] == mapping]
        else:
            values = [float(r["test_accuracy"]) for r in rows if r["method"] == row.label]
            assert row.images == pytest.approx(statistics.mean(int(r["images_used"]) for r in rows
                                                               if r["method"] == row.label))
        assert row.seeds == len(values) == 3
        assert row.test_mean == pytest.approx(statistics.mean(values))
        assert row.test_sd == pytest.approx(statistics.stdev(values))
        assert table[row.label][3] == f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"
    best = max((row for row in summary if row.kind == "black-box"), key=lambda row: row.test_mean)
    assert best.best and sum(row.best for row in summary) == 1
    assert table["cma"][7] == "cpu" and table["no prompt (linear)"][7] == "—"


def test_a_row_whose_cells_ran_on_two_machines_names_both(finished, tmp_path, capsys):
    experiment, out, _ = finished
    mixed = tmp_path / "mixed"
    shutil.copytree(out / "cells", mixed / "cells")
    moved = experiment.cells(mixed)[0]  # cma, seed 0: as if its cell had been run on a GPU machine
    result = json.loads((moved.dir / "result.json").read_text(encoding="utf-8"))
    result["machine"].update(device="cuda", device_name="NVIDIA H200")
    (moved.dir / "result.json").write_text(json.dumps(result), encoding="utf-8")
    parser = argparse.ArgumentParser()
    add_experiment_parser(parser.add_subparsers(dest="command"))
    assert run_experiment_command(parser.parse_args(["experiment", str(experiment.path), "--out", str(mixed),
                                                     "--report-only"])) == 0
    lines = (mixed / "summary.md").read_text(encoding="utf-8").splitlines()
    rows = [[col.strip().strip("*") for col in line.split("|")[1:-1]] for line in lines]
    machines = {cols[1]: cols[7] for cols in rows if len(cols) == 9 and cols[0].isdigit()}
    assert machines["cma"] == "NVIDIA H200, cpu" and machines["guided (ours)"] == "cpu"


def test_changed_settings_are_not_mixed_with_finished_cells(finished, tmp_path):
    experiment, out, _ = finished
    changed = load_experiment(write_config(tmp_path, TOY_GRID.replace("grid = 4", "grid = 3")))
    with pytest.raises(ValueError, match=r"was run with grid=4, but the config now gives grid=3"):
        run_experiment(changed, out)


def test_a_cell_run_before_a_setting_existed_counts_as_run_with_its_default(tmp_path):
    """A newer version adds a setting: cells finished before it ran as its default does, and are kept."""
    one_cell = TOY_GRID.replace("seeds = [0, 1, 2]", "seeds = [0]").split('[methods."guided (ours)"]')[0]
    experiment = load_experiment(write_config(tmp_path, one_cell))
    out = tmp_path / "out"
    assert run_experiment(experiment, out).ran == ["cma_b1500_s0"]
    config = out / "cells" / "cma_b1500_s0" / "config.toml"
    config.write_text("\n".join(line for line in config.read_text(encoding="utf-8").splitlines()
                                if not line.startswith("scores")) + "\n", encoding="utf-8")  # as an older bbvp wrote it
    assert run_experiment(experiment, out).skipped == ["cma_b1500_s0"]
    explicit = load_experiment(write_config(tmp_path, one_cell.replace('optimizer = "cma"',
                                                                       'optimizer = "cma"\nscores = "logits"')))
    with pytest.raises(ValueError, match=r"was run with scores='auto', but the config now gives scores='logits'"):
        run_experiment(explicit, out)


@pytest.mark.parametrize(("line", "message"), [
    ("gird = 4", r"toy\.toml: \[grid\]: unknown setting 'gird'"),
    ("lr = \"fast\"", r"toy\.toml: \[grid\]: lr must be float, got 'fast'"),
    ("seed = 3", r"toy\.toml: \[grid\]: 'seed' cannot be set here; list the seeds in the top-level `seeds`"),
    ("optimizer = [\"cma\", \"spsa\"]", r"toy\.toml: \[methods\.\"cma\"\] sets 'optimizer', which \[grid\] lists"),
])
def test_a_bad_setting_is_refused_naming_the_key_and_the_file(tmp_path, line, message):
    path = write_config(tmp_path, TOY_GRID.replace("[grid]\n", f"[grid]\n{line}\n"))
    with pytest.raises(ValueError, match=message):
        load_experiment(path)


def test_a_bad_top_level_key_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"toy\.toml: unknown top-level key 'seed'"):
        load_experiment(write_config(tmp_path, "seed = [0]\n" + TOY_GRID))


def test_axes_multiply_and_name_the_cells(tmp_path):
    path = write_config(tmp_path, TOY_GRID.replace('data = "digits"', 'data = ["digits", "squares"]')
                        .replace("grid = 4", "grid = [2, 4]"))
    experiment: Experiment = load_experiment(path)
    cells = experiment.cells(tmp_path)
    assert len(cells) == 2 * 2 * 2 * 3
    cell = next(c for c in cells if c.config.optimizer == "guided" and c.config.data == "squares"
                and c.config.grid == 2 and c.seed == 1)
    assert cell.name == "guided-ours_data-squares_grid-2_b1500_s1"
    assert cell.method == "guided (ours), grid=2" and cell.panel == "data=squares"
    assert cell.config.mapping == "linear" and cell.config.quiet and cell.config.budget == 1500


@pytest.mark.parametrize("path", sorted(Path(__file__).parent.parent.glob("experiments/configs/*.toml")),
                         ids=lambda path: path.name)
def test_the_committed_configs_parse_with_at_least_three_seeds(path, tmp_path):
    experiment = load_experiment(path)
    assert len(experiment.seeds) >= 3
    cells = experiment.cells(tmp_path)
    assert len(cells) == len(experiment.seeds) * len(experiment.budgets) * len(experiment.methods)


LONG_GRID = TOY_GRID.replace("budgets = [1500]", "budgets = [400000]").split("[methods.")[0] + """
[methods.cma]
optimizer = "cma"
mapping = "frequency"
"""


@pytest.mark.parametrize("jobs, signal_number", [(2, signal.SIGINT), (2, signal.SIGTERM), (1, signal.SIGINT)],
                         ids=["2 jobs, SIGINT", "2 jobs, SIGTERM", "1 job, SIGINT"])
def test_a_stop_sent_to_the_experiment_alone_stops_its_running_cells_after_their_step(tmp_path, jobs, signal_number):
    """As `kill` or a job scheduler does: the signal reaches the experiment's process only, never its workers."""
    config = write_config(tmp_path, LONG_GRID)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "blackbox_vp.cli", "experiment", str(config), "--out", str(out), "--jobs", str(jobs)]
    cells = load_experiment(config).cells(out)  # 3 seeds

    def steps(cell) -> int:
        journal = cell.dir / "journal.jsonl"
        return journal.read_text(encoding="utf-8").count('"event": "step"') if journal.exists() else 0

    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        deadline = time.monotonic() + 120
        while sum(steps(cell) >= 2 for cell in cells) < jobs:
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, f"{jobs} cells took no 2 steps in 120 s"
            time.sleep(0.05)
        process.send_signal(signal_number)
        assert process.wait(timeout=90) == 130
        message = process.stderr.read()
    assert (f"stopped; of 3 cells to run, 0 finished, 0 failed, {jobs} interrupted (checkpoints kept), {3 - jobs} "
            "not started: run the same command again") in message
    started = [cell for cell in cells if (cell.dir / "checkpoint").exists()]
    assert len(started) == jobs
    for cell in started:
        result = json.loads((cell.dir / "result.json").read_text(encoding="utf-8"))
        assert result["status"] == "interrupted" and result["queries_used"] < 400000
        assert read_journal(cell.dir / "journal.jsonl")[-1]["event"] == "interrupted"  # a clean stop, not a kill
    sizes = [(cell.dir / "journal.jsonl").stat().st_size for cell in started]
    time.sleep(1.0)
    assert [(cell.dir / "journal.jsonl").stat().st_size for cell in started] == sizes  # no worker left running


def test_threads_sets_each_cells_torch_threads_and_zero_is_refused(tmp_path, capsys):
    one_cell = TOY_GRID.replace("seeds = [0, 1, 2]", "seeds = [0]").split('[methods."guided (ours)"]')[0]
    experiment = load_experiment(write_config(tmp_path, one_cell))
    with pytest.raises(ValueError, match="--threads must be at least 1, got 0"):
        run_experiment(experiment, tmp_path / "out", threads=0)
    outcome = run_experiment(experiment, tmp_path / "out", jobs=1, threads=1)
    assert outcome.ran == ["cma_b1500_s0"] and "1 to run (1 at a time, 1 torch threads each)" in capsys.readouterr().out
