"""experiments/probe_transfer_objective.py: one round of the shadow's transfer under each objective, side by side."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

from backends import make_backend
from blackbox_vp.config import RunConfig
from blackbox_vp.data import load_task, split
from blackbox_vp.run_setup import build_prompt, split_sizes


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    config = RunConfig(data="digits", backend="toy", optimizer="shadow", train=60, val=20, test=40, seed=0)
    backend = make_backend("toy")
    prompt = build_prompt(config, backend.image_size)
    dataset = load_task("digits", prompt.inner_size, seed=0)
    splits = split(dataset, *split_sizes(config, config.budget, len(dataset), len(dataset.classes)), seed=0)
    grey = load("refit_head").head_accuracy(backend, prompt, prompt.initial(), splits.train, splits.test)
    assert rows[0]["head_test"] == grey
