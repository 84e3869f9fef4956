"""Crash anywhere: a run killed at every one of its queries, then resumed, ends finished, within its budget,
and exactly like the uninterrupted run wherever the images counted twice leave the budget room for it.

The kill is real: a forked process runs the run with ``BBVP_CRASH_AT_SEND=k`` and dies (``os._exit``, no
clean-up, as under SIGKILL) right after the journal announced its k-th query, for every k of the
uninterrupted run's queries: mapping, validations, steps, head stage and test, and whatever phase is
added later, since every query and every white-box forward is announced there. The resumed run says in
``adjustments`` what it shrank or skipped; a resumed run without adjustments must equal the uninterrupted one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from forking import in_child
from torch import nn

from backends import Backend
from backends.torch_classifier import TorchClassifierBackend
from backends.toy import ToyBackend
from blackbox_vp import RunConfig, optimize, resume
from blackbox_vp.checkpoint import CRASH_AT_CHECKPOINT
from blackbox_vp.journal import CRASH_AT_SEND, read_journal

# Automatic sizes at a small budget: val 120, mapping 300, head stage 420, a few steps; 9 to 14 queries a run.
SETTINGS = dict(backend="toy", optimizer="guided", data="digits", budget=1200, train=300, test=100, grid=4, quiet=True, seed=1)


def tiny_torch_backend() -> TorchClassifierBackend:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                          nn.Linear(128, 20))
    return TorchClassifierBackend(model, [f"tiny-{i}" for i in range(20)], (32, 32), max_batch=256)


METHODS: dict[str, tuple[dict, Callable[[], Backend]]] = {
    "guided + linear head": ({}, ToyBackend),
    "cma, frequency mapping": ({"optimizer": "cma", "mapping": "frequency"}, ToyBackend),
    "white-box reference": ({"optimizer": "whitebox", "lr": 0.3}, tiny_torch_backend),
    "shadow": ({"optimizer": "shadow", "surrogate": "toy-torch", "epochs": 1, "budget": 1500, "rounds": 1,
                "batch_size": 16}, ToyBackend),  # a round, then a correction step
}


def sends(out: Path) -> list[dict]:
    return [entry for entry in read_journal(out / "journal.jsonl") if entry["event"] == "send"]


def killed_at(at: int, config: RunConfig, make_backend: Callable[[], Backend]) -> int:
    """Run ``config`` in a forked process that dies at its ``at``-th query; its exit code (137)."""
    def work() -> int:
        os.environ[CRASH_AT_SEND] = str(at)
        torch.set_num_threads(1)
        optimize(config, backend=make_backend())
        return 0  # the run ended before that query: the test is wrong

    return in_child(work)


def same_result(a, b) -> bool:
    """Same prompt, steps, validations (step, accuracy) and test accuracy."""
    return (a.steps == b.steps and np.array_equal(a.theta, b.theta) and a.test_accuracy == b.test_accuracy
            and [(h["step"], h["val_accuracy"]) for h in a.history] == [(h["step"], h["val_accuracy"])
                                                                           for h in b.history])


@pytest.mark.parametrize("method", list(METHODS))
def test_a_run_killed_at_any_query_resumes_to_the_end(method, tmp_path, capsys):
    overrides, make_backend = METHODS[method]
    settings = {**SETTINGS, **overrides}
    expected = optimize(RunConfig(**settings, out=str(tmp_path / "uninterrupted")), backend=make_backend())
    queries = len(sends(tmp_path / "uninterrupted"))
    assert expected.status == "finished" and queries >= 8
    identical, adjusted = [], {}
    for at in range(1, queries + 1):
        out = tmp_path / f"killed-{at}"
        assert killed_at(at, RunConfig(**settings, out=str(out)), make_backend) == 137, f"kill point {at}"
        killed_phase = sends(out)[-1]["phase"]
        resumed = resume(out, backend=make_backend())
        assert resumed.status == "finished", f"kill point {at} ({killed_phase})"
        assert resumed.queries_used <= resumed.budget
        assert resumed.images_lost == sends(out)[at - 1]["images"]  # only the query in flight is counted twice
        if resumed.adjustments:
            adjusted[at] = f"{killed_phase}: " + "; ".join(f"{k} {v}" for k, v in resumed.adjustments.items())
        else:
            assert same_result(resumed, expected), f"kill point {at} ({killed_phase}): no adjustment, other result"
        if same_result(resumed, expected):
            identical.append(at)
    with capsys.disabled():
        print(f"\n{method}: {len(identical)} of {queries} kill points end identical to the uninterrupted run, "
              f"{queries - len(identical)} adjusted")
        for at, why in adjusted.items():
            print(f"  kill point {at}, {why[:160]}")
    test_phase = [at for at in range(1, queries + 1) if sends(tmp_path / "uninterrupted")[at - 1]["phase"] == "test"]
    assert test_phase and set(test_phase) <= set(identical)  # the test is counted apart: nothing to shrink


def test_a_run_killed_again_at_every_resume_still_ends_finished(tmp_path):
    """Losses add up: killed in its baseline validation (120 images) and then at the first query of each of 7
    resumes, the run has less left than one validation after the 7th loss; the resume after it skips what can
    no longer be judged and tests the initial prompt (killed once more there), and the last one finishes."""
    out = tmp_path / "run"
    assert killed_at(3, RunConfig(**SETTINGS, out=str(out)), ToyBackend) == 137  # 1, 2: the mapping; 3: baseline
    for _ in range(7):
        at = len(sends(out)) + 1

        def work(at: int = at) -> int:
            os.environ[CRASH_AT_SEND] = str(at)
            resume(out, backend=ToyBackend())
            return 0

        assert in_child(work) == 137
    result = resume(out, backend=ToyBackend())
    assert result.status == "finished" and result.resumes == 8 and result.steps == 0
    assert result.phases["validation"]["images"] == 7 * 120  # every baseline validation lost, none answered
    assert result.queries_used == 300 + 7 * 120 <= result.budget
    assert "skipped" in result.adjustments["baseline validation"] and result.kept["prompt"] == "initial"
    assert result.test_accuracy == result.baseline_test_accuracy  # the initial prompt, tested


def test_a_shadow_run_killed_after_any_checkpoint_resumes_to_the_same_end(tmp_path):
    """The shadow method's distil and transfer phases send nothing: they are killed after each checkpoint
    instead (every phase's end, each answered query, every few white-box steps), losing no image, so every
    resumed run must end exactly as the uninterrupted one."""
    settings = {**SETTINGS, "optimizer": "shadow", "surrogate": "toy-torch", "epochs": 1, "batch_size": 16,
                "budget": 1500, "rounds": 1}  # the round leaves room for a correction step: 450 + 450 + 96 + 450
    expected = optimize(RunConfig(**settings, out=str(tmp_path / "uninterrupted")), backend=ToyBackend())
    phases_seen, at = set(), 0
    while True:
        at += 1
        out = tmp_path / f"killed-{at}"

        def work(at: int = at, out: Path = out) -> int:
            os.environ[CRASH_AT_CHECKPOINT] = str(at)
            torch.set_num_threads(1)
            optimize(RunConfig(**settings, out=str(out)), backend=ToyBackend())
            return 0

        if in_child(work) == 0:  # fewer checkpoints than ``at``: every one has been tried
            break
        phases_seen.add(load_phase(out))
        resumed = resume(out, backend=ToyBackend())
        assert resumed.status == "finished" and resumed.images_lost == 0 and not resumed.adjustments, f"kill {at}"
        assert same_result(resumed, expected) and resumed.queries_used == expected.queries_used, f"kill {at}"
    assert {"mapping", "baseline", "distil", "transfer", "verify", "correct", "head", "test", "done"} <= phases_seen
    assert expected.budget_plan["correction_steps"] == 1 and at > 15


def load_phase(out: Path) -> str:
    from blackbox_vp.checkpoint import load_checkpoint

    return load_checkpoint(out / "checkpoint").phase
