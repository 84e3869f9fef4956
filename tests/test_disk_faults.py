"""A full disk or an unwritable run directory: a clear error before the first query, or during the run the
last good checkpoint kept and the run resumable. The disk fills for real: a forked process lowers its file
size limit (RLIMIT_FSIZE), so writes past it fail with EFBIG, half-way through a file."""

from __future__ import annotations

import resource
import signal
from pathlib import Path

import numpy as np
from forking import in_child

from backends import BackendWrapper
from backends.toy import ToyBackend
from blackbox_vp import RunConfig, optimize, resume
from blackbox_vp.checkpoint import load_checkpoint
from blackbox_vp.cli import main
from blackbox_vp.disk import RunDirectoryError
from blackbox_vp.journal import read_journal

SETTINGS = dict(backend="toy", optimizer="cma", mapping="frequency", data="digits", budget=1500, batch_size=8, grid=4,
                val=60, test=120, train=400, quiet=True, seed=2)
FLAGS = ["--backend", "toy", "--optimizer", "cma", "--mapping", "frequency", "--budget", "1500", "--batch-size", "8",
         "--grid", "4", "--val", "60", "--test", "120", "--train", "400", "--quiet", "--seed", "2"]


def limit_file_size(size: int) -> None:
    """From now on, this process cannot write a file past ``size`` bytes (EFBIG, as a full disk would refuse)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the write kills the process instead of failing
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


class DiskFillsAt(BackendWrapper):
    """At its ``at``-th query the disk 'fills': files can no longer grow past half the checkpoint's size."""

    def __init__(self, inner, at: int, checkpoint: Path):
        super().__init__(inner)
        self.at, self.calls, self.checkpoint = at, 0, checkpoint

    def query(self, images):
        self.calls += 1
        if self.calls == self.at:
            limit_file_size(self.checkpoint.stat().st_size // 2)
        return self.inner.query(images)


def test_a_checkpoint_write_that_fails_half_way_keeps_the_last_good_one(tmp_path):
    expected = optimize(RunConfig(**SETTINGS, out=str(tmp_path / "uninterrupted")))
    out = tmp_path / "run"

    def run() -> int:
        try:
            optimize(RunConfig(**SETTINGS, out=str(out)), backend=DiskFillsAt(ToyBackend(), 6, out / "checkpoint"))
        except RunDirectoryError as error:
            resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            (tmp_path / "error.txt").write_text(str(error))
            return 2
        return 0

    assert in_child(run) == 2
    assert (tmp_path / "error.txt").read_text().startswith(f"cannot write checkpoint {out / 'checkpoint'}: File too "
                                                          "large; free space on that disk")
    assert not (out / "checkpoint.tmp").exists()
    kept = load_checkpoint(out / "checkpoint")  # whole: the last good one, from before the disk filled
    assert kept.phase == "optimization" and kept.steps >= 1
    result = resume(out)
    assert result.status == "finished" and result.queries_used <= result.budget
    assert result.images_lost > 0  # the queries sent after the last good checkpoint are counted again
    steps = {e["step"]: e["loss"] for e in read_journal(out / "journal.jsonl") if e["event"] == "step"}
    expected_steps = {e["step"]: e["loss"] for e in read_journal(tmp_path / "uninterrupted" / "journal.jsonl")
                      if e["event"] == "step"}
    assert steps == {step: expected_steps[step] for step in steps}
    if not result.adjustments:
        np.testing.assert_array_equal(result.theta, expected.theta)


def test_a_full_disk_is_a_clear_error_before_the_first_query(tmp_path):
    out = tmp_path / "run"

    def run() -> int:
        import contextlib
        import io

        errors = io.StringIO()
        limit_file_size(4096)  # config.toml fits, the first checkpoint does not
        with contextlib.redirect_stderr(errors):
            code = main(["optimize", *FLAGS, "--out", str(out)])
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        (tmp_path / "stderr.txt").write_text(errors.getvalue())
        return code

    assert in_child(run) == 2
    message = (tmp_path / "stderr.txt").read_text()
    assert "cannot write checkpoint" in message and "choose another --out" in message and "Traceback" not in message
    assert not any(e["event"] == "send" for e in read_journal(out / "journal.jsonl"))  # nothing was sent
    assert not (out / "checkpoint").exists() and not (out / "checkpoint.tmp").exists()


def test_an_out_that_cannot_be_a_directory_is_refused_naming_it(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert main(["optimize", *FLAGS, "--out", str(blocker / "run")]) == 2
    error = capsys.readouterr().err
    assert f"cannot write into directory {blocker / 'run'}" in error and "choose another --out" in error
