"""experiments/probe_transfer_objective.py: one round of the shadow's transfer under each objective, side by side."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from backends import make_backend
from blackbox_vp.config import RunConfig
from blackbox_vp.losses import LOSSES
from blackbox_vp.mappings import FrequencyMapping
from blackbox_vp.run_setup import build_prompt, task_splits
from blackbox_vp.scoring import score_all


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def probe_splits(backend_name: str, **settings):
    """The backend, prompt and splits the probe builds for ``settings`` (seed 0)."""
    config = RunConfig(data="digits", backend=backend_name, optimizer="shadow", seed=0, **settings)
    backend = make_backend(backend_name)
    prompt = build_prompt(config, backend.image_size)
    return backend, prompt, task_splits(config, prompt)


def test_each_objective_gets_a_row_and_grey_is_scored_as_a_head_refitted_on_the_target(monkeypatch, capsys):
    sizes = ["--train", "60", "--val", "20", "--test", "40"]
    monkeypatch.setattr(sys, "argv", ["probe", "--backend", "toy", "--surrogate", "toy-torch", "--data", "digits",
                                      *sizes, "--epochs", "1", "--objectives", "frequency,head", "--head-l2", "1.0"])
    load("probe_transfer_objective").main()
    out = capsys.readouterr().out
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [row["objective"] for row in rows] == ["grey", "frequency", "head"]
    for row in rows:  # 20 validation and 40 test images
        assert all(0 <= row[key] <= 1 and np.isclose(row[key] * n, round(row[key] * n))
                   for key, n in (("head_val", 20), ("head_test", 40), ("frequency_val", 20), ("frequency_test", 40)))
    assert "| head | " in out and "head l2 1.0" in out
    backend, prompt, splits = probe_splits("toy", train=60, val=20, test=40)
    grey = load("refit_head").head_accuracy(backend, prompt, prompt.initial(), splits.train, splits.test)
    assert rows[0]["head_test"] == grey
    assert rows[0]["grey_mapping_test"] == rows[0]["frequency_test"]  # grey's own answers: the same mapping


def test_the_target_objective_trains_on_the_targets_own_gradient_in_the_parameterization_asked(monkeypatch, capsys):
    sizes = ["--train", "40", "--val", "20", "--test", "20"]
    monkeypatch.setattr(sys, "argv", ["probe", "--backend", "toy-torch", "--surrogate", "toy-torch", "--data", "digits",
                                      *sizes, "--epochs", "1", "--objectives", "target", "--parameterization", "grid",
                                      "--grid", "4", "--lr", "0.5"])
    probe = load("probe_transfer_objective")
    probe.main()
    out = capsys.readouterr().out
    assert [json.loads(line)["objective"] for line in out.splitlines() if line.startswith("{")] == ["grey", "target"]
    assert "parameterization {'type': 'grid', 'grid': 4}" in out
    # trained through its own gradient, the target's own loss falls
    target, prompt, splits = probe_splits("toy-torch", train=40, val=20, test=20, parameterization="grid", grid=4)
    labels = torch.from_numpy(splits.train.labels)
    frequency = FrequencyMapping().fit(score_all(target, prompt, prompt.initial(), splits.train.images), labels, 10)
    theta, _ = probe.train_prompt("frequency", target, prompt, frequency, splits, 3, 0.5, 8, 0, 0.5, 0.01, 0.0)

    def loss(point) -> float:
        scores = score_all(target, prompt, point, splits.train.images)
        return float(LOSSES.get("ce")(frequency.probabilities(scores), labels).mean())

    assert loss(theta) < loss(prompt.initial()) - 0.05


def test_the_target_objective_needs_a_local_torch_target(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["probe", "--backend", "toy", "--surrogate", "toy-torch", "--objectives", "target"])
    with pytest.raises(SystemExit):
        load("probe_transfer_objective").main()
    assert "must be a local torch model" in capsys.readouterr().err
