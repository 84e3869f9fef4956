"""Whole runs against a loopback HTTP backend built from a --backend URL: the journal, a fatal error and
resume, the token, bad data and bad settings (issue 8, run level). Every server is ScriptedServer on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from loopback import OK, Fault, ScriptedServer
from PIL import Image

from backends import BackendError
from backends.toy import ToyBackend
from blackbox_vp import RunConfig, optimize, resume
from blackbox_vp.cli import main
from blackbox_vp.run import RunInterrupted
from blackbox_vp.run_directory import CONFIG

SECRET = "sk-run-faults-7f3a9c1e5b"
BUSY = Fault("status", 503, b'{"error": "busy"}', (("Retry-After", "0"),))


def run_config(url: str, **overrides) -> RunConfig:
    settings = dict(backend=url, optimizer="cma", mapping="frequency", data="digits", budget=1500, batch_size=8,
                    grid=4, val=60, test=120, train=400, quiet=True)
    return RunConfig(**(settings | overrides))


def journal(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def clean():
    """The same run on the local toy model (over HTTP it gives the same scores: test_http_server)."""
    return optimize(run_config("toy"), backend=ToyBackend())


def test_every_failed_attempt_is_a_journal_line(tmp_path, clean):
    out = tmp_path / "run"
    with ScriptedServer(ToyBackend(), lambda n: BUSY if n % 5 == 2 else OK) as server:
        result = optimize(run_config(server.url, out=str(out), http_attempts=3))
    failures = [line for line in journal(out) if line["event"] == "http_failure"]
    assert server.faults > 0
    assert len(failures) == server.faults == result.backend_stats["failures"]
    assert all(line["status"] == 503 and line["retry"] and line["url"].startswith(server.url) for line in failures)
    assert result.history == clean.history and result.queries_used == clean.queries_used
    assert result.test_accuracy == clean.test_accuracy


def test_a_fatal_http_error_leaves_a_resumable_checkpoint(tmp_path, clean):
    out = tmp_path / "run"
    broken = {"on": True}
    fail_from = 20  # inference requests; the mapping and baseline take fewer

    def script(n: int) -> Fault:
        return BUSY if broken["on"] and n >= fail_from else OK

    with ScriptedServer(ToyBackend(), script) as server:
        with pytest.raises(BackendError, match="answered 503"):
            optimize(run_config(server.url, out=str(out), http_attempts=2))
        lines = journal(out)
        assert [line["phase"] for line in lines if line["event"] == "error"] == ["optimization"]
        # The request that gave up failed twice; siblings in flight are cancelled when it does, and a 503 the
        # server sent to a cancelled one is never read by the client, so it is no failed attempt of the client's.
        assert 2 <= sum(line["event"] == "http_failure" for line in lines) <= server.faults
        assert (out / "checkpoint").exists()
        broken["on"] = False  # the server is back, clean
        result = resume(out)
    step_images = next(line["step_images"] for line in lines if line["event"] == "start")
    assert result.status == "finished" and result.resumes == 1 and result.images_lost > 0
    assert result.queries_used <= result.budget
    assert abs(result.queries_used - clean.queries_used) <= step_images
    assert server.images_answered <= result.queries_used + result.test_queries  # the lost ones counted, maybe unanswered


@pytest.mark.parametrize("source", ["token_env", "token_file"])
def test_the_token_is_in_no_file_a_run_writes_nor_in_help(tmp_path, monkeypatch, capsys, caplog, source):
    if source == "token_env":
        monkeypatch.setenv("BBVP_TEST_TOKEN", SECRET)
        token = {"token_env": "BBVP_TEST_TOKEN"}
    else:
        path = tmp_path / "token"
        path.write_text(SECRET + "\n")
        os.chmod(path, 0o600)
        token = {"token_file": str(path)}
    echo = Fault("status", 503, json.dumps({"error": f"bad token {SECRET}"}).encode(), (("Retry-After", "0"),))
    out = tmp_path / "run"
    caplog.set_level(logging.DEBUG)
    with ScriptedServer(ToyBackend(), lambda n: echo if n in (1, 7) else OK) as server:  # accepts any bearer
        result = optimize(run_config(server.url, out=str(out), jsonl=True, quiet=False, **token))
    assert server.faults == 2 and result.backend_stats["failures"] == 2
    written = [path for path in out.rglob("*") if path.is_file()]
    assert {CONFIG, "result.json", "journal.jsonl", "checkpoint", "prompt.json"} <= {path.name for path in written}
    for path in written:
        assert SECRET.encode() not in path.read_bytes(), path
    with pytest.raises(SystemExit):
        main(["optimize", "--help"])
    captured = capsys.readouterr()
    assert "--token-file" in captured.out and "--no-tls-verify" in captured.out
    assert SECRET not in captured.out + captured.err + caplog.text


def test_bad_data_folder_fails_before_any_query(tmp_path, capsys):
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / label / f"{i}.png")
    (root / "b" / "broken.png").write_bytes(b"this is not a png")
    with ScriptedServer(ToyBackend()) as server:
        with pytest.raises(ValueError, match="broken.png"):
            optimize(run_config(server.url, data=str(root), val=4, test=4, train=None, out=str(tmp_path / "run")))
        assert main(["optimize", "--backend", server.url, "--optimizer", "guided", "--data", str(root), "--quiet"]) == 2
        assert "broken.png" in capsys.readouterr().err
        assert server.received == 0


@pytest.mark.parametrize("overrides, match", [
    ({"optimizer": "nope"}, "unknown optimizer 'nope'"),
    ({"budget": 0}, "--budget must be at least 1, got 0"),
    ({"budget": -5}, "--budget must be at least 1, got -5"),
    ({"budget": 100}, "--budget 100 is too small"),
    ({"width": 40}, "--width 40 is too wide for the model's 64x64 input"),
    ({"batch_size": 0}, "--batch-size must be at least 1"),
])
def test_bad_settings_are_refused_before_any_query(tmp_path, overrides, match):
    with ScriptedServer(ToyBackend()) as server:
        with pytest.raises(ValueError, match=match):
            optimize(run_config(server.url, out=str(tmp_path / "run"), **overrides))
        assert server.received == 0
    assert not (tmp_path / "run" / "journal.jsonl").exists()


@pytest.mark.parametrize("line, match", [
    ("batchsize = 8", "unknown setting 'batchsize'"),
    ('budget = "lots"', "budget must be an integer"),
])
def test_a_bad_config_file_is_refused_before_any_query(tmp_path, capsys, line, match):
    settings = tmp_path / "settings.toml"
    settings.write_text(line + "\n")
    with ScriptedServer(ToyBackend()) as server:
        assert main(["optimize", "--config", str(settings), "--backend", server.url, "--quiet"]) == 2
        assert server.received == 0
    assert match in capsys.readouterr().err


class CtrlCAfter(ToyBackend):
    """The toy model, with a Ctrl-C (SIGINT to this process) after ``calls`` queries."""

    def __init__(self, calls: int):
        super().__init__()
        self.calls = calls

    def query(self, images: np.ndarray) -> np.ndarray:
        self.calls -= 1
        if self.calls == 0:
            signal.raise_signal(signal.SIGINT)
        return super().query(images)


def test_an_absurd_budget_is_accepted_and_ctrl_c_stops_the_run_within_it(tmp_path):
    """10**12 is no error: the budget is a hard ceiling on images sent, and the run spends it until Ctrl-C, which
    stops it after the current step with a checkpoint and a partial result (resumable)."""
    out = tmp_path / "run"
    with pytest.raises(RunInterrupted) as stopped:
        optimize(run_config("toy", budget=10**12, out=str(out)), backend=CtrlCAfter(calls=12))
    result = stopped.value.result
    assert result.status == "interrupted" and result.steps >= 1 and result.queries_used <= 10**12
    assert (out / "checkpoint").exists() and json.loads((out / "result.json").read_text())["budget"] == 10**12


def test_a_batch_limit_refusal_names_the_fix_and_the_resume_that_takes_it(tmp_path, capsys):
    """Triton's 400 "batch-size must be <= N": the hint names --http-max-batch N, which a resume may now change."""
    out = tmp_path / "run"
    limit = {"on": True}
    refusal = Fault("status", 400, b'{"error": "inference request batch-size must be <= 64"}')

    def script(n: int) -> Fault:
        return refusal if limit["on"] and n >= 4 else OK

    with ScriptedServer(ToyBackend(), script) as server:
        flags = ["--backend", server.url, "--optimizer", "cma", "--mapping", "frequency", "--budget", "1500",
                 "--batch-size", "8", "--grid", "4", "--val", "60", "--test", "120", "--train", "400", "--quiet"]
        assert main(["optimize", *flags, "--out", str(out)]) == 1
        error = capsys.readouterr().err
        assert "answered 400" in error and "batch-size must be <= 64" in error
        assert (f"lower the images per request with --http-max-batch 64 (it may be given with --resume), then resume "
                f"with `bbvp optimize --resume {out}`") in error
        limit["on"] = False  # the server takes the smaller requests
        assert main(["optimize", "--resume", str(out), "--http-max-batch", "64"]) == 0
    assert "http_max_batch = 64" in (out / CONFIG).read_text()  # kept for later resumes
    resumed = [line for line in journal(out) if line["event"] == "resume"]
    assert resumed[-1]["changed"] == {"http_max_batch": 64}
    assert json.loads((out / "result.json").read_text())["status"] == "finished"


def test_an_answer_a_resume_cannot_fix_gets_no_resume_hint(tmp_path, capsys):
    """A server answering logits (negative scores): resuming would fail the same way, so the hint says what to change."""
    out = tmp_path / "run"
    logits = Fault("body", body=json.dumps({"scores": [[-1.0] * 20]}).encode())  # one image per request here

    def script(n: int) -> Fault:
        return logits if n >= 4 else OK

    with ScriptedServer(ToyBackend(), script) as server:
        flags = ["--backend", server.url, "--optimizer", "cma", "--mapping", "frequency", "--budget", "1500",
                 "--batch-size", "8", "--grid", "4", "--val", "60", "--test", "120", "--train", "400", "--quiet",
                 "--http-max-batch", "1"]
        assert main(["optimize", *flags, "--out", str(out)]) == 1
    error = capsys.readouterr().err
    assert "negative" in error and "resume with" not in error
    assert "a resume would send the same request and fail the same way" in error
