"""Experiment cells as Ray tasks on a local Ray: same run directories, same results, resume semantics."""

import json
import os
import types

import pytest

ray = pytest.importorskip("ray")

from blackbox_vp import RunConfig, optimize  # noqa: E402
from blackbox_vp.ray_runner import run_cells_on_ray  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning",
                                        "ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def cell(tmp_path, seed: int, name: str = "cells") -> RunConfig:
    return RunConfig(backend="toy", data="digits", optimizer="spsa", budget=1500, batch_size=8, grid=4, seed=seed,
                     quiet=True, out=str(tmp_path / name / f"s{seed}"))


def test_two_toy_cells_run_as_ray_tasks_like_local_runs(local_ray, tmp_path):
    cells = [cell(tmp_path, 0), cell(tmp_path, 1)]
    results = run_cells_on_ray(cells)
    assert set(results) == {"s0", "s1"}
    for config in cells:
        result = results[config.out.rsplit("/", 1)[-1]]
        assert isinstance(result, dict), result
        written = json.loads((tmp_path / "cells" / config.out.rsplit("/", 1)[-1] / "result.json").read_text())
        assert written["status"] == "finished" and written["queries_used"] == result["queries_used"] <= 1500
        local = optimize(cell(tmp_path, config.seed, name="local"))  # the same cell, in this process
        assert result["test_accuracy"] == local.test_accuracy and result["queries_used"] == local.queries_used

    again = run_cells_on_ray(cells)  # finished cells are resumed, which returns their result without a query
    for name, result in again.items():
        assert {k: v for k, v in result.items() if k != "seconds"} == {k: v for k, v in results[name].items()
                                                                       if k != "seconds"}


def test_a_failing_cell_is_reported_and_does_not_stop_the_others(local_ray, tmp_path):
    bad = RunConfig(backend="toy", optimizer="guided", data=str(tmp_path / "missing"), budget=1500, quiet=True, out=str(tmp_path / "bad"))
    results = run_cells_on_ray([bad, cell(tmp_path, 2)])
    assert isinstance(results["bad"], Exception) and "missing" in str(results["bad"])
    assert isinstance(results["s2"], dict)


TOY_GRID = """
name = "toy grid on ray"
seeds = [0, 1]
budgets = [1500]

[grid]
backend = "toy"
data = "digits"
optimizer = "spsa"
batch_size = 8
grid = 4
train = 400
val = 60
test = 60
"""


def test_the_experiment_command_runs_the_grid_on_ray_and_a_second_call_skips_it(local_ray, tmp_path, capsys):
    from blackbox_vp.cli import main

    config = tmp_path / "toy.toml"
    config.write_text(TOY_GRID, encoding="utf-8")
    command = ["experiment", str(config), "--out", str(tmp_path / "out"), "--ray", "local", "--ray-cpus", "1"]
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert "2 cells, 0 finished, 2 to run (as Ray tasks on local, 1 torch threads each)" in printed
    assert "[1/2] " in printed and "[2/2] " in printed
    for seed in (0, 1):
        result = json.loads((tmp_path / "out" / "cells" / f"b1500_s{seed}" / "result.json").read_text())
        assert result["status"] == "finished"
    with (tmp_path / "out" / "results.csv").open() as handle:
        assert len(handle.read().splitlines()) == 3
    assert "--ray local --ray-cpus 1" in (tmp_path / "out" / "summary.md").read_text()

    assert main(command) == 0
    assert "2 cells, 2 finished, 0 to run" in capsys.readouterr().out


def test_a_cell_keeps_its_thread_count_when_the_backend_sets_threads_from_the_environment(monkeypatch, tmp_path):
    import torch

    import blackbox_vp.run
    from backends.torch_classifier import set_cpu_threads
    from blackbox_vp.cell import run_cell

    seen = {}

    def optimize(config):  # what building a local backend does, then a stand-in result
        set_cpu_threads()
        seen.update(env=os.environ.get("OMP_NUM_THREADS"), threads=torch.get_num_threads())
        return types.SimpleNamespace(test_accuracy=0.5, val_accuracy=0.5, queries_used=0, seconds=0.0)

    monkeypatch.setattr(blackbox_vp.run, "optimize", optimize)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    try:
        run_cell(cell(tmp_path, 0), 3)
    finally:
        torch.set_num_threads(before)
    assert seen == {"env": "3", "threads": 3}
    assert os.environ["OMP_NUM_THREADS"] == "1"  # restored after the cell
