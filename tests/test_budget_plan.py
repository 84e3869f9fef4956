"""Any budget: automatic sizes follow the budget down to a named floor; only explicit sizes that cannot fit
are refused, naming them; result.json says how the budget was split and why."""

from __future__ import annotations

import json

import pytest

from backends.toy import ToyBackend
from blackbox_vp import RunConfig, optimize
from blackbox_vp.cli import main
from blackbox_vp.run_setup import BudgetPlan

DIGITS, CLASSES = 1797, 10
GUIDED, CMA = 6, 19  # candidates per step: guided; CMA-ES on the default 8x8x3 grid (192 dimensions)


def test_a_large_budget_is_split_as_it_always_was():
    plan = BudgetPlan.make(RunConfig(budget=20000), DIGITS, CLASSES, GUIDED, head_stage=True)
    assert (plan.train, plan.val, plan.test, plan.mapping, plan.validations, plan.batch_size) == (1000, 198, 593, 1000,
                                                                                                  10, 32)
    assert plan.head_stage == 1198 and plan.step_images == 192


@pytest.mark.parametrize("budget, val, mapping, batch", [(1000, 100, 250, 16), (300, 30, 75, 5)])
def test_a_small_budget_shrinks_the_automatic_sizes(budget, val, mapping, batch):
    plan = BudgetPlan.make(RunConfig(budget=budget), DIGITS, CLASSES, GUIDED, head_stage=True)
    assert (plan.val, plan.mapping, plan.batch_size) == (val, mapping, batch)
    assert plan.needed <= budget and plan.optimization >= 2 * plan.step_images
    assert "fewer than 2 steps" in plan.why["batch_size"]


def test_the_smallest_budget_is_named_and_the_one_below_refused():
    smallest = BudgetPlan.smallest_budget(RunConfig(), DIGITS, CLASSES, GUIDED, head_stage=True)
    assert smallest == 130  # the README's figure for the default method on digits
    BudgetPlan.make(RunConfig(budget=smallest), DIGITS, CLASSES, GUIDED, head_stage=True)
    with pytest.raises(ValueError, match=f"raise --budget to at least {smallest}$"):
        BudgetPlan.make(RunConfig(budget=smallest - 1), DIGITS, CLASSES, GUIDED, head_stage=True)


def test_explicit_sizes_that_cannot_fit_are_refused_naming_them():
    with pytest.raises(ValueError, match=r"or drop or lower --val 200, --batch-size 32 \(left out, they follow"):
        BudgetPlan.make(RunConfig(budget=900, val=200, batch_size=32), DIGITS, CLASSES, CMA, head_stage=True)


@pytest.mark.parametrize("optimizer", ["cma", "guided"])
@pytest.mark.parametrize("budget", [300, 1500])
def test_a_run_at_a_small_budget_finishes_within_it_and_says_how_it_split_it(tmp_path, optimizer, budget):
    result = optimize(RunConfig(backend="toy", optimizer=optimizer, budget=budget, quiet=True, out=str(tmp_path)),
                      backend=ToyBackend())
    assert result.status == "finished" and result.queries_used <= budget and result.steps >= 2
    saved = json.loads((tmp_path / "result.json").read_text())
    plan = saved["budget_plan"]
    assert plan["budget"] == budget and plan["mapping"] + 2 * plan["val"] + plan["step_images"] + plan["head_stage"] <= budget
    assert set(plan["why"]) == {"train", "val", "test", "mapping", "head_stage", "validations", "batch_size"}
    assert saved["kept"]["prompt"] in ("searched", "initial") and "judged on" in saved["kept"]["why"]
    assert f"batch_size = {plan['batch_size']}" in (tmp_path / "config.toml").read_text()  # resolved for resumes


def test_cma_at_1500_images_is_no_longer_refused(capsys):
    """The issue's case: `--optimizer cma --budget 1500` was refused ("raise --budget to at least 1952")."""
    assert main(["optimize", "--backend", "toy", "--optimizer", "cma", "--budget", "1500", "--quiet"]) == 0
    assert "images used" in capsys.readouterr().out
