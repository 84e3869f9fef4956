"""experiments/refit_head.py: a saved prompt's head refitted on another backend's answers, on the run's splits."""

from __future__ import annotations

import json
import sys

import numpy as np
import torch

from backends import make_backend
from blackbox_vp.config import RunConfig
from blackbox_vp.mappings import FrequencyMapping
from blackbox_vp.prompt_file import save_prompt
from blackbox_vp.run_setup import build_prompt, task_splits
from blackbox_vp.scoring import score_all
from tests.test_probe_transfer_objective import load

refit_head = load("refit_head")


def test_the_prompt_and_grey_are_scored_on_the_seeds_splits_with_a_head_fitted_on_the_backend(tmp_path, monkeypatch,
                                                                                              capsys):
    config = RunConfig(data="digits", backend="toy", train=60, val=20, test=50, seed=1)
    backend = make_backend("toy")
    prompt = build_prompt(config, backend.image_size)
    theta = np.full(prompt.dimension, -1.0)  # a dark frame: toy answers it otherwise than grey (0.84 against 0.82)
    splits = task_splits(config, prompt)
    mapping = FrequencyMapping().fit(score_all(backend, prompt, theta, splits.train.images),
                                     torch.from_numpy(splits.train.labels), len(splits.train.classes))
    save_prompt(tmp_path / "prompt.json", prompt, theta, mapping, {"backend": "toy-torch"})
    monkeypatch.setattr(sys, "argv", ["refit_head", str(tmp_path / "prompt.json"), "--backend", "toy", "--data",
                                      "digits", "--train", "60", "--val", "20", "--test", "50", "--seed", "1"])
    refit_head.main()
    row = json.loads(capsys.readouterr().out)
    assert row["test_images"] == 50 and row["prompt_trained_on"] == "toy-torch" and row["seed"] == 1
    assert row["prompt_head_test_accuracy"] == refit_head.head_accuracy(backend, prompt, theta, splits.train,
                                                                        splits.test)
    assert row["grey_head_test_accuracy"] == refit_head.head_accuracy(backend, prompt, prompt.initial(), splits.train,
                                                                      splits.test)
    assert row["prompt_head_test_accuracy"] != row["grey_head_test_accuracy"]  # the prompt is scored, not grey
    other_seed = task_splits(RunConfig(data="digits", train=60, val=20, test=50, seed=0), prompt)
    assert not np.array_equal(other_seed.test.labels, splits.test.labels)  # so the seed's splits are the ones used
