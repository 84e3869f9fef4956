"""Crash, SIGKILL, Ctrl-C and resume, on the toy backend: a resumed run replays the uninterrupted one."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from backends import BackendWrapper
from backends.torch_classifier import TorchClassifierBackend
from backends.toy import ToyBackend
from blackbox_vp import RunConfig, optimize, resume
from blackbox_vp.checkpoint import load_checkpoint
from blackbox_vp.cli import main
from blackbox_vp.journal import read_journal
from blackbox_vp.optimizers import search_names

SETTINGS = dict(backend="toy", optimizer="cma", mapping="frequency", data="digits", budget=2000, batch_size=8, grid=4, val=60, test=120, train=400,
                quiet=True, seed=2)
STEP_IMAGES = 15 * 8  # 48 dimensions -> CMA population 15, 8 images each
CLI_FLAGS = ["--backend", "toy", "--optimizer", "cma", "--mapping", "frequency", "--budget", "2000", "--batch-size", "8", "--grid", "4", "--val", "60", "--test",
             "120", "--train", "400", "--quiet", "--seed", "2"]


class Crash(BaseException):
    """Stands for the process dying: nothing in the run catches it."""


class CrashingBackend(BackendWrapper):
    """Dies in the middle of its ``at``-th query, after the journal announced it."""

    def __init__(self, inner, at: int):
        super().__init__(inner)
        self.at, self.calls = at, 0

    def query(self, images):
        self.calls += 1
        if self.calls == self.at:
            raise Crash
        return self.inner.query(images)


def step_losses(out: Path) -> dict[int, float]:
    """Loss per step from the journal (the last line of a step taken again after a resume counts)."""
    return {e["step"]: e["loss"] for e in read_journal(out / "journal.jsonl") if e["event"] == "step"}


def validations(result) -> list[tuple[int, float]]:
    return [(h["step"], h["val_accuracy"]) for h in result.history]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    return optimize(RunConfig(**SETTINGS, out=str(out))), out


def assert_replays(resumed, resumed_out: Path, expected, expected_out: Path) -> None:
    """Same minibatches and candidates step for step; the images counted twice may cost the last step."""
    assert resumed.queries_used <= resumed.budget
    assert resumed.queries_used - resumed.images_lost in (expected.queries_used, expected.queries_used - STEP_IMAGES)
    losses, expected_losses = step_losses(resumed_out), step_losses(expected_out)
    assert losses == {step: expected_losses[step] for step in losses}
    if resumed.steps == expected.steps:
        np.testing.assert_array_equal(resumed.theta, expected.theta)
        assert validations(resumed) == validations(expected)
    else:
        assert resumed.steps == expected.steps - 1 and resumed.images_lost > 0
        assert "is the last" in resumed.adjustments["steps"]
        assert validations(resumed)[:-1] == [v for v in validations(expected) if v[0] < resumed.steps]


def test_sigkill_mid_step_then_resume_replays_the_uninterrupted_run(uninterrupted, tmp_path):
    expected, expected_out = uninterrupted
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "blackbox_vp.cli", "optimize", *CLI_FLAGS, "--out", str(out)]
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as process:
        deadline = time.monotonic() + 120
        while not (out / "journal.jsonl").exists() or len(step_losses(out)) < 3:
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "the run took no 3 steps in 120 s"
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL
    assert main(["optimize", "--resume", str(out), "--quiet"]) == 0
    saved = json.loads((out / "result.json").read_text())
    assert saved["status"] == "finished" and saved["resumes"] == 1
    resumed = resume(out, backend=ToyBackend())  # a finished run: rewrites its outputs, sends nothing
    assert resumed.queries_used == saved["queries_used"] and resumed.test_queries == saved["test_queries"]
    assert_replays(resumed, out, expected, expected_out)


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_stops_after_the_step_and_resume_gives_the_uninterrupted_result(uninterrupted, tmp_path, signal_number):
    """Ctrl-C, or the SIGTERM of `kill` and job schedulers."""
    expected, _ = uninterrupted
    out = tmp_path / "stopped"
    command = [sys.executable, "-m", "blackbox_vp.cli", "optimize", *CLI_FLAGS, "--out", str(out)]
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as process:
        while not (out / "journal.jsonl").exists() or len(step_losses(out)) < 2:
            assert process.poll() is None, process.stderr.read()
            time.sleep(0.005)
        process.send_signal(signal_number)
        assert process.wait(timeout=120) == 130
        message = process.stderr.read()
    assert f"bbvp optimize --resume {out}" in message
    partial = json.loads((out / "result.json").read_text())
    assert partial["status"] == "interrupted" and partial["test_accuracy"] is None
    assert partial["steps"] == load_checkpoint(out / "checkpoint").steps >= 2
    result = resume(out)
    assert result.images_lost == 0 and result.queries_used == expected.queries_used
    np.testing.assert_array_equal(result.theta, expected.theta)
    assert result.history == expected.history and result.test_accuracy == expected.test_accuracy


@pytest.mark.parametrize("at", [4, 7])  # a step's query; a validation's query (after its step's)
def test_a_crash_in_a_query_is_counted_and_the_query_sent_again(uninterrupted, tmp_path, at):
    expected, expected_out = uninterrupted
    out = tmp_path / "crashed"
    with pytest.raises(Crash):
        optimize(RunConfig(**SETTINGS, out=str(out)), backend=CrashingBackend(ToyBackend(), at))
    sends = [e for e in read_journal(out / "journal.jsonl") if e["event"] == "send"]
    assert sends[-1]["phase"] == ("optimization" if at == 4 else "validation")
    result = resume(out, backend=ToyBackend())
    assert result.images_lost == sends[-1]["images"]  # only the query in flight
    assert_replays(result, out, expected, expected_out)


@pytest.mark.parametrize("name", search_names())
def test_every_search_resumed_after_a_crash_in_a_step_replays_its_uninterrupted_run(tmp_path, name):
    settings = dict(SETTINGS, optimizer=name, budget=1200, surrogate="none")
    expected = optimize(RunConfig(**settings, out=str(tmp_path / "a")))
    with pytest.raises(Crash):  # the mapping takes the first 2 queries: the 5th is a step's or a validation's
        optimize(RunConfig(**settings, out=str(tmp_path / "b")), backend=CrashingBackend(ToyBackend(), 5))
    resumed = resume(tmp_path / "b", backend=ToyBackend())
    assert resumed.images_lost > 0 and resumed.queries_used <= 1200
    losses, expected_losses = step_losses(tmp_path / "b"), step_losses(tmp_path / "a")
    assert len(losses) >= expected.steps - 1 and losses == {step: expected_losses[step] for step in losses}
    if resumed.steps == expected.steps:
        np.testing.assert_array_equal(resumed.theta, expected.theta)


@pytest.mark.parametrize("at", [1, 2])  # the mapping's first query (256 images) and its second (144)
def test_a_crash_in_the_mapping_costs_only_the_query_in_flight(uninterrupted, tmp_path, at):
    expected, expected_out = uninterrupted
    out = tmp_path / "crashed"
    with pytest.raises(Crash):
        optimize(RunConfig(**SETTINGS, out=str(out)), backend=CrashingBackend(ToyBackend(), at))
    result = resume(out, backend=ToyBackend())
    lost = 256 if at == 1 else 144  # the answered first query was checkpointed: it is not sent again
    assert result.images_lost == lost
    assert result.phases["mapping"]["images"] == 400 + lost
    assert_replays(result, out, expected, expected_out)


def tiny_torch_backend() -> TorchClassifierBackend:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                          nn.Linear(128, 20))
    return TorchClassifierBackend(model, [f"tiny-{i}" for i in range(20)], (32, 32), max_batch=256)


def test_whitebox_resumes_its_adam_state(tmp_path):
    settings = dict(SETTINGS, optimizer="whitebox", budget=700, batch_size=32, lr=0.3)
    expected = optimize(RunConfig(**settings, out=str(tmp_path / "a")), backend=tiny_torch_backend())
    with pytest.raises(Crash):
        optimize(RunConfig(**settings, out=str(tmp_path / "b")), backend=CrashingBackend(tiny_torch_backend(), 3))
    resumed = resume(tmp_path / "b", backend=tiny_torch_backend())
    losses = step_losses(tmp_path / "b")
    assert len(losses) >= expected.steps - 2 and losses == {s: step_losses(tmp_path / "a")[s] for s in losses}
    assert resumed.queries_used <= 700


def test_resume_refuses_changed_settings_and_a_fresh_run_refuses_a_used_directory(tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(Crash):
        optimize(RunConfig(**SETTINGS, out=str(out)), backend=CrashingBackend(ToyBackend(), 4))
    assert main(["optimize", "--resume", str(out), "--budget", "5000"]) == 2
    assert "--budget cannot change when resuming" in capsys.readouterr().err
    assert main(["optimize", *CLI_FLAGS, "--out", str(out)]) == 2
    assert f"--out {out} already holds a run; continue it with `bbvp optimize --resume {out}`" in capsys.readouterr().err
    text = (out / "config.toml").read_text()
    (out / "config.toml").write_text(text.replace("budget = 2000", "budget = 5000"))
    with pytest.raises(ValueError, match=r"budget = 2000 \(now 5000\)"):
        resume(out, backend=ToyBackend())


def test_a_half_written_last_journal_line_is_cut(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(Crash):
        optimize(RunConfig(**SETTINGS, out=str(out)), backend=CrashingBackend(ToyBackend(), 4))
    with open(out / "journal.jsonl", "a") as journal:
        journal.write('{"event": "st')
    result = resume(out, backend=ToyBackend())
    assert result.status == "finished"
    assert all(line.startswith("{") for line in (out / "journal.jsonl").read_text().splitlines())
