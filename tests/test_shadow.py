"""The shadow method: a label adapter that follows the target, the plan of its budget, and whole runs of it
against the toy target with a tiny torch surrogate (labels of its own), full and top-5-only."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from backends import TopKBackend
from backends.toy import ToyBackend
from backends.toy_torch import toy_torch_backend
from blackbox_vp import RunConfig, optimize
from blackbox_vp.checkpoint import load_checkpoint
from blackbox_vp.journal import read_journal
from blackbox_vp.run_setup import MAX_ROUNDS, TOTAL_EPOCHS, ShadowPlan
from blackbox_vp.shadow import LabelAdapter, ShadowModel

SHADOW = dict(backend="toy", data="digits", optimizer="shadow", surrogate="toy-torch", budget=1500, train=300,
              test=100, epochs=1, quiet=True, seed=1)


def test_the_adapter_of_two_models_with_the_same_labels_starts_as_the_identity():
    adapter = LabelAdapter(["a", "b", "c"], ["a", "b", "c"])
    features = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]))
    assert adapter.matched == 3
    assert torch.allclose(adapter.logits(features).softmax(dim=1), features.exp())


def test_the_adapter_matches_label_names_whatever_their_case_and_order():
    adapter = LabelAdapter(["cat", "Dog", "fox"], ["dog", "bird", "CAT"])
    assert adapter.matched == 2
    assert adapter.w0[1, 0] == 1 and adapter.w0[0, 2] == 1 and adapter.w0[:, 1].sum() == 0


def test_fitting_learns_a_target_that_renames_and_sharpens_the_surrogates_labels():
    """The target answers with its own labels: surrogate label i is target label (7 i) mod 10, twice as sharp."""
    generator = torch.Generator().manual_seed(0)
    source = F.log_softmax(torch.randn(400, 10, generator=generator) * 2, dim=1)
    permutation = (7 * torch.arange(10)) % 10
    target = torch.zeros_like(source)
    target[:, permutation] = F.softmax(2 * source, dim=1)
    adapter = LabelAdapter([f"s{i}" for i in range(10)], [f"t{i}" for i in range(10)])
    before = float((target * (target.log() - F.log_softmax(adapter.logits(source), dim=1))).sum(dim=1).mean())
    after = adapter.fit(source, target)
    assert adapter.matched == 0 and after < 0.05 * before
    agree = (adapter.logits(source).argmax(dim=1) == target.argmax(dim=1)).float().mean()
    assert agree > 0.95


def test_the_shadow_model_is_differentiable_in_the_image_and_gives_the_targets_label_space():
    model = ShadowModel(toy_torch_backend(), LabelAdapter([f"toy-torch-{i}" for i in range(16)],
                                                          [f"toy-{i}" for i in range(20)]))
    images = np.random.default_rng(0).integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    assert model.features(images).shape == (3, 16)
    model.adapter.fit(model.features(images), F.softmax(torch.randn(3, 20, generator=torch.Generator().manual_seed(0)),
                                                        dim=1))  # no label matches: it starts at zero
    pixels = torch.rand(2, 3, 32, 32, requires_grad=True)
    logits = model.logits(pixels)
    logits[:, 3].sum().backward()
    assert logits.shape == (2, 20) and pixels.grad.abs().sum() > 0


def plan(budget: int, **settings) -> ShadowPlan:
    return ShadowPlan.make(RunConfig(optimizer="shadow", budget=budget, **settings), 1797, 10)


def test_the_plan_spends_rounds_of_mapping_images_and_one_validation():
    at_5000 = plan(5000, train=1000, val=100, test=697)
    assert (at_5000.mapping, at_5000.rounds, at_5000.round_images, at_5000.needed) == (1000, 3, 1100, 4400)
    assert at_5000.epochs == TOTAL_EPOCHS // 3
    at_20000 = plan(20000, train=1000, val=100, test=697)
    assert (at_20000.rounds, at_20000.epochs) == (MAX_ROUNDS, 1)
    assert (at_20000.correction_steps, at_20000.needed) == (1, 1100 + 16 * 1100 + 6 * 32 + 1100)  # what is left
    small = plan(1000, train=1000, val=100, test=697)  # room for one round: fewer mapping images
    assert (small.mapping, small.rounds, small.needed) == (400, 1, 1000)
    assert plan(5000, train=1000, val=100, test=697, rounds=2, correction_images=0).needed == 3300
    assert plan(5000, train=1000, val=100, test=697, rounds=2).correction_steps == 3  # 1,700 left: 3 steps and a round


def test_the_correction_gets_what_the_rounds_leave_or_what_is_set_aside_for_it():
    assert plan(5000, train=1000, val=100, test=697).correction_steps == 0  # 600 left: less than a step and a round
    assert plan(20000, train=1000, val=100, test=697, correction_images=0).needed == 1100 + 16 * 1100
    chosen = plan(5000, train=1000, val=100, test=697, rounds=2, correction_images=576)
    assert (chosen.correction_steps, chosen.correction, chosen.needed) == (3, 3 * 192 + 1100, 1100 + 2 * 1100 + 1676)
    fewer_rounds = plan(5000, train=1000, val=100, test=697, correction_images=576)  # rounds make room for it
    assert (fewer_rounds.rounds, fewer_rounds.correction_steps) == (2, 3) and fewer_rounds.needed <= 5000
    with pytest.raises(ValueError, match="--correction-images 100 holds no correction step: .* 192 images"):
        plan(5000, correction_images=100)


def test_the_correction_searches_from_the_best_round_and_its_prompt_is_verified_as_a_last_round(tmp_path):
    settings = {**SHADOW, "rounds": 1, "batch_size": 8, "out": str(tmp_path)}  # 150 left after 1 round: 3 steps of 48
    result = optimize(RunConfig(**settings), backend=ToyBackend())
    assert result.budget_plan["correction_steps"] == 3 and result.budget_plan["correction"] == 3 * 48 + 450
    assert result.queries_used == 450 + 450 + 3 * 48 + 450 <= result.budget
    journal = [entry for entry in read_journal(tmp_path / "journal.jsonl") if entry["event"] != "send"]
    assert [entry["event"] for entry in journal] == ["start", "distil", "transfer", "step", "correct", "correct",
                                                     "correct", "step", "end"]
    corrections = [entry for entry in journal if entry["event"] == "correct"]
    assert [entry["images"] for entry in corrections] == [900 + 48, 900 + 96, 900 + 144]
    assert [entry["corrected"] for entry in journal if entry["event"] == "step"] == [False, True]
    assert "round 2 (corrected)" in result.kept["why"]
    state = load_checkpoint(tmp_path / "checkpoint")
    first, corrected = state.shadow.rounds
    assert np.array_equal(state.shadow.correction.x0, first["theta"]) and state.shadow.correction.steps == 3
    assert np.array_equal(corrected["theta"], state.shadow.correction.recommend())


def test_a_budget_too_small_is_refused_with_the_smallest_that_works():
    with pytest.raises(ValueError, match="raise --budget to at least") as error:
        plan(400, train=1000, val=100, test=697, rounds=2, mapping_images=300)
    smallest = int(str(error.value).split("at least ")[1].split(",")[0])
    assert smallest == 300 + 100 + 2 * 400
    assert plan(smallest, train=1000, val=100, test=697, rounds=2, mapping_images=300).needed == smallest


def test_a_shadow_run_sends_its_plan_and_journals_each_round(tmp_path):
    result = optimize(RunConfig(**SHADOW, out=str(tmp_path)), backend=ToyBackend())
    shown = result.budget_plan
    assert result.status == "finished" and shown["rounds"] == 2 and shown["mapping"] == 300
    assert result.queries_used == shown["needed"] == 300 + 150 + 2 * 450 <= result.budget
    events = [entry["event"] for entry in read_journal(tmp_path / "journal.jsonl") if entry["event"] != "send"]
    assert events == ["start", "distil", "transfer", "step", "distil", "transfer", "step", "end"]
    distils = [entry for entry in read_journal(tmp_path / "journal.jsonl") if entry["event"] == "distil"]
    assert [entry["answers"] for entry in distils] == [300, 600]  # every answer so far, priming first
    assert all(entry["kl_after"] < entry["kl_newest_before"] for entry in distils)
    assert [entry["step"] for entry in result.history] == [0, 1, 2, 2]  # baseline, the rounds, the head stage
    assert result.history[-1]["head"] and result.kept["prompt"] in ("searched", "initial")
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["config"]["parameterization"] == "full" and saved["config"]["rounds"] == 2
    assert saved["config"]["epochs"] == 1 and saved["budget_plan"]["why"]["epochs"] == "set (--epochs)"


def test_with_transfer_head_l2_the_prompt_is_trained_through_the_shadows_own_head(tmp_path):
    through_head = optimize(RunConfig(**SHADOW, transfer_head_l2=1.0, out=str(tmp_path / "head")), backend=ToyBackend())
    through_mapping = optimize(RunConfig(**SHADOW), backend=ToyBackend())
    transfers = [entry for entry in read_journal(tmp_path / "head" / "journal.jsonl") if entry["event"] == "transfer"]
    assert [entry["through"] for entry in transfers] == ["the shadow's head"] * 2
    assert through_head.status == "finished" and through_head.queries_used == through_mapping.queries_used
    head = load_checkpoint(tmp_path / "head" / "checkpoint").shadow.transfer_head
    assert head.l2 == 1.0 and head.scale_quantile == 0.5 and head.weight.shape == (20, 10)  # toy labels -> classes
    assert (head.scale == head.scale.min()).sum() >= len(head.scale) // 2  # floored at their median: half sit there
    first_round = [entry for entry in through_head.history if entry["step"] == 1]
    assert first_round != [entry for entry in through_mapping.history if entry["step"] == 1]


def test_transfer_head_l2_must_be_positive():
    with pytest.raises(ValueError, match="--transfer-head-l2 must be a positive"):
        optimize(RunConfig(**SHADOW, transfer_head_l2=0.0), backend=ToyBackend())


def test_the_kept_prompt_is_the_best_heads_round_or_the_initial_one(tmp_path):
    result = optimize(RunConfig(**{**SHADOW, "budget": 2000}), backend=ToyBackend())
    head = result.history[-1]
    if result.kept["prompt"] == "searched":
        assert head["pooled_accuracy"] > head["initial_pooled_accuracy"] and np.any(result.theta != 0)
    else:
        assert head["pooled_accuracy"] <= head["initial_pooled_accuracy"] and not np.any(result.theta)


def test_a_top_5_only_target_and_the_frequency_mapping_work_too():
    result = optimize(RunConfig(**{**SHADOW, "mapping": "frequency"}), backend=TopKBackend(ToyBackend(), 5))
    assert result.status == "finished" and result.queries_used == 1350
    assert len([entry for entry in result.history if entry.get("head")]) == 0
    best_round = max(result.history, key=lambda entry: entry["val_accuracy"])
    assert result.val_accuracy == best_round["val_accuracy"]


def test_the_shadow_method_needs_a_local_surrogate():
    with pytest.raises(ValueError, match="--surrogate none"):
        optimize(RunConfig(**{**SHADOW, "surrogate": "none"}), backend=ToyBackend())
    with pytest.raises(ValueError, match="is not a local torch model"):
        optimize(RunConfig(**{**SHADOW, "surrogate": "toy"}), backend=ToyBackend())


def test_on_digits_the_automatic_plan_takes_any_budget_from_80_images():
    with pytest.raises(ValueError, match="raise --budget to at least 80"):
        plan(79)
    floor = plan(80)
    assert (floor.mapping, floor.val, floor.rounds, floor.needed) == (20, 20, 1, 80)
