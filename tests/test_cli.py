import json
import subprocess
import sys

import pytest

from blackbox_vp.cli import build_parser, main

SUBCOMMANDS = ["optimize", "demo", "evaluate", "predict", "list"]


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: bbvp " + command in capsys.readouterr().out


def test_optimize_help_shows_defaults():
    text = build_parser()._subparsers._group_actions[0].choices["optimize"].format_help()
    assert "--budget BUDGET" in text and "(default: 20000)" in text


def test_list_optimizers(capsys):
    assert main(["list", "optimizers"]) == 0
    assert "cma" in capsys.readouterr().out


def test_optimize_then_evaluate_reproduces_the_test_accuracy(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--backend", "toy", "--budget", "2500", "--batch-size", "8", "--grid", "4", "--val", "60",
            "--test", "120", "--train", "400", "--quiet", "--seed", "3"]
    assert main(["optimize", *args, "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    capsys.readouterr()
    assert main(["evaluate", "--prompt", str(out / "prompt.json"), "--backend", "toy", "--val", "60",
                 "--test", "120", "--train", "400", "--seed", "3"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["test_accuracy"] == result["test_accuracy"]


def test_invalid_input_is_an_error_naming_the_option(capsys):
    assert main(["optimize", "--backend", "toy", "--optimizer", "nope", "--quiet"]) == 2
    assert "unknown optimizer 'nope'" in capsys.readouterr().err
    assert main(["optimize", "--backend", "toy", "--budget", "100", "--quiet"]) == 2
    assert "--budget 100 is too small" in capsys.readouterr().err


def test_console_script_runs():
    completed = subprocess.run([sys.executable, "-m", "blackbox_vp.cli", "list", "backends"],
                               capture_output=True, text=True, check=True)
    assert "reference" in completed.stdout
