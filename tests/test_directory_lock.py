"""One process at a time in a run or experiment directory; a damaged journal names its line."""

import json
import subprocess
import sys
import textwrap

import pytest

from blackbox_vp import RunConfig, optimize, resume
from blackbox_vp.directory_lock import EXPERIMENT_LOCK, RUN_LOCK, DirectoryInUse, hold_directory
from blackbox_vp.experiment import run_experiment
from blackbox_vp.experiment_config import load_experiment
from blackbox_vp.journal import read_journal

SETTINGS = dict(backend="toy", optimizer="spsa", mapping="frequency", data="digits", budget=300, batch_size=8,
                grid=4, train=100, val=20, test=20, quiet=True, seed=0)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("locked") / "run"
    return optimize(RunConfig(**SETTINGS, out=str(out))), out


def test_a_new_run_into_a_directory_in_use_sends_nothing_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    with hold_directory(out, RUN_LOCK):  # another process's run, as far as the lock can tell
        with pytest.raises(DirectoryInUse, match=f"{out} is in use by another process.*wait for it to end"):
            optimize(RunConfig(**SETTINGS, out=str(out)))
    assert sorted(path.name for path in out.iterdir()) == [RUN_LOCK]
    result = optimize(RunConfig(**SETTINGS, out=str(out)))  # free again: runs
    assert result.queries_used <= 300 and (out / "checkpoint").exists()


def test_a_resume_of_a_directory_in_use_leaves_its_journal_alone(finished_run):
    _, out = finished_run
    journal = (out / "journal.jsonl").read_bytes() + b'{"event": "send", "id": 99, "ph'  # a torn last line
    (out / "journal.jsonl").write_bytes(journal)
    with hold_directory(out, RUN_LOCK):
        with pytest.raises(DirectoryInUse):
            resume(out)
    assert (out / "journal.jsonl").read_bytes() == journal  # not even the torn line cut


def test_the_lock_of_a_killed_process_is_free_at_once(tmp_path):
    out = tmp_path / "run"
    holder = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from blackbox_vp.directory_lock import RUN_LOCK, hold_directory
        with hold_directory(Path({str(out)!r}), RUN_LOCK):
            print("held", flush=True)
            sys.stdin.readline()
    """)
    with subprocess.Popen([sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True) as process:
        assert process.stdout.readline() == "held\n"
        with pytest.raises(DirectoryInUse):
            optimize(RunConfig(**SETTINGS, out=str(out)))
        process.kill()
        process.wait(timeout=30)
    assert optimize(RunConfig(**SETTINGS, out=str(out))).queries_used <= 300  # no stale lock to delete


def test_an_experiment_in_a_directory_in_use_runs_no_cell(tmp_path):
    config = tmp_path / "grid.toml"
    config.write_text('name = "g"\nseeds = [0]\nbudgets = [300]\n[grid]\nbackend = "toy"\ndata = "digits"\n'
                      'optimizer = "spsa"\nmapping = "frequency"\ntrain = 100\nval = 20\ntest = 20\n', encoding="utf-8")
    out = tmp_path / "out"
    with hold_directory(out, EXPERIMENT_LOCK):
        with pytest.raises(DirectoryInUse, match=f"{out} is in use.*{EXPERIMENT_LOCK}"):
            run_experiment(load_experiment(config), out)
    assert sorted(path.name for path in out.iterdir()) == [EXPERIMENT_LOCK]


def test_a_damaged_journal_line_is_named_and_the_file_kept(tmp_path):
    journal = tmp_path / "journal.jsonl"
    lines = [json.dumps({"event": "start"}), json.dumps({"event": "send", "id": 1, "phase": "mapping", "images": 8}),
             'ages": 120}', json.dumps({"event": "step", "step": 1})]
    journal.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"journal.jsonl, line 3, is damaged .*'ages\": 120}'.*Mend that line"):
        read_journal(journal)
    assert journal.read_text(encoding="utf-8").splitlines() == lines
