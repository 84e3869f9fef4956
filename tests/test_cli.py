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


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_option_has_a_help_line_with_its_default(command):
    parser = build_parser()._subparsers._group_actions[0].choices[command]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{command} {action.option_strings[0]} has no help line"
            text = formatter._get_help_string(action)
            assert "default:" in text or "%(default)" in text or action.required, (command, action.option_strings)


def test_list_optimizers_shows_each_with_its_options(capsys):
    assert main(["list", "optimizers"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in lines if not line.startswith(" ")]
    assert {"cma", "guided", "shadow", "whitebox", "ng:<...>"} <= set(names) and names == sorted(names)
    assert lines[lines.index(next(line for line in lines if line.startswith("spsa "))) + 1].split() == [
        "options:", "a=0.1,", "c=0.1,", "A=10.0,", "alpha=0.602,", "gamma=0.101"]


def test_optimize_then_evaluate_reproduces_the_test_accuracy(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--backend", "toy", "--optimizer", "guided", "--budget", "2500", "--batch-size", "8", "--grid", "4", "--val", "60",
            "--test", "120", "--train", "400", "--quiet", "--seed", "3"]
    assert main(["optimize", *args, "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    capsys.readouterr()
    assert main(["evaluate", "--prompt", str(out / "prompt.json"), "--backend", "toy", "--val", "60",
                 "--test", "120", "--train", "400", "--seed", "3"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["test_accuracy"] == result["test_accuracy"]


def test_invalid_input_is_an_error_naming_the_option(capsys, tmp_path):
    assert main(["optimize", "--backend", "toy", "--optimizer", "nope", "--quiet"]) == 2
    assert "unknown optimizer 'nope'" in capsys.readouterr().err
    assert main(["optimize", "--backend", "toy", "--optimizer", "guided", "--budget", "100", "--quiet"]) == 2
    assert "--budget 100 is too small" in capsys.readouterr().err
    assert main(["optimize", "--backend", "toy", "--optimizer", "guided", "--width", "40", "--quiet"]) == 2
    assert "--width 40 is too wide for the model's 64x64 input" in capsys.readouterr().err
    assert main(["optimize", "--backend", "toy", "--optimizer", "guided", "--batch-size", "0", "--quiet"]) == 2
    assert "--batch-size must be at least 1, got 0" in capsys.readouterr().err
    assert main(["optimize", "--backend", "toy", "--optimizer", "guided", "--data", str(tmp_path / "missing"), "--quiet"]) == 2
    assert f"--data {tmp_path / 'missing'}: unknown data" in capsys.readouterr().err
    (tmp_path / "photos" / "cat").mkdir(parents=True)
    (tmp_path / "photos" / "cat" / "broken.png").write_bytes(b"not a png")
    assert main(["optimize", "--backend", "toy", "--optimizer", "guided", "--data", str(tmp_path / "photos"), "--quiet"]) == 2
    assert "cannot read image" in capsys.readouterr().err


def test_jsonl_prints_one_object_per_step_then_the_result(capsys):
    assert main(["optimize", "--backend", "toy", "--optimizer", "guided", "--budget", "1200", "--batch-size", "8", "--grid", "4", "--val",
                 "60", "--test", "60", "--train", "300", "--quiet", "--jsonl"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["event"] for line in lines] == ["step"] * (len(lines) - 1) + ["result"]
    assert [line["step"] for line in lines[:-1]] == list(range(1, lines[-1]["steps"] + 1))
    assert {"images", "loss", "train_accuracy", "val_accuracy", "step_size", "seconds"} <= set(lines[0])


def test_console_script_runs():
    completed = subprocess.run([sys.executable, "-m", "blackbox_vp.cli", "list", "backends"],
                               capture_output=True, text=True, check=True)
    assert "reference" in completed.stdout
