"""Experiment cells as Ray tasks on a local Ray: same run directories, same results, resume semantics."""

import json

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
    bad = RunConfig(backend="toy", data=str(tmp_path / "missing"), budget=1500, quiet=True, out=str(tmp_path / "bad"))
    results = run_cells_on_ray([bad, cell(tmp_path, 2)])
    assert isinstance(results["bad"], Exception) and "missing" in str(results["bad"])
    assert isinstance(results["s2"], dict)
