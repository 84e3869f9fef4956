"""Settings files: written and read back exactly; mistakes named with the file and the setting."""

import json
from dataclasses import fields

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blackbox_vp import RunConfig
from blackbox_vp.cli import main
from blackbox_vp.config import read_config, write_config


def test_every_setting_round_trips(tmp_path):
    config = RunConfig(backend="toy", width=9, jpeg_quality=75, lr=1e-05, mapping_images=300, out="runs/x", quiet=True)
    write_config(tmp_path / "config.toml", config)
    assert RunConfig(**read_config(tmp_path / "config.toml")) == config
    text = (tmp_path / "config.toml").read_text()
    assert "patch" not in text and "budget = 20000" in text  # None left out, defaults written


@given(st.text(), st.floats(allow_nan=False), st.integers(-(2**63), 2**63 - 1))
def test_any_string_float_and_int_round_trips(tmp_path_factory, text, number, integer):
    path = tmp_path_factory.mktemp("config") / "config.toml"
    config = RunConfig(data=text, lr=number, seed=integer)
    write_config(path, config)
    assert RunConfig(**read_config(path)) == config


def test_unknown_setting_and_wrong_type_name_the_file_and_the_setting(tmp_path):
    path = tmp_path / "settings.toml"
    path.write_text('batch-size = 8\n')
    with pytest.raises(ValueError, match=r"settings.toml: unknown setting 'batch-size'; did you mean 'batch_size'"):
        read_config(path)
    path.write_text('budget = "lots"\n')
    with pytest.raises(ValueError, match=r"settings.toml: budget must be an integer, got 'lots'"):
        read_config(path)
    path.write_text('budget = \n')
    with pytest.raises(ValueError, match=r"settings.toml is not valid TOML"):
        read_config(path)
    with pytest.raises(ValueError, match=r"cannot read config file .*missing.toml"):
        read_config(tmp_path / "missing.toml")


def test_a_run_directory_config_repeats_the_run_and_flags_override_it(tmp_path, capsys):
    first, second, third = tmp_path / "first", tmp_path / "second", tmp_path / "third"
    assert main(["optimize", "--backend", "toy", "--optimizer", "guided", "--budget", "1500", "--batch-size", "8", "--grid", "4", "--val", "60",
                 "--test", "60", "--train", "300", "--quiet", "--seed", "1", "--out", str(first)]) == 0
    saved = read_config(first / "config.toml")
    unset = {"jpeg_quality", "labels", "token_env", "token_file", "torchserve_key_file", "rate_limit", "image_rate_limit", "http_max_batch",
             "rounds", "epochs", "correction_images", "transfer_head_l2", "input_mean", "input_std", "input_layout",
             "chat_model", "top_k_only",
             "optimizer_options", "mapping_options", "loss_options"}
    # None: off, or not of this method (rounds, epochs, correction_images, transfer_head_l2: shadow's; the others: some
    # servers')
    assert {f.name for f in fields(RunConfig)} - set(saved) == unset  # every setting, automatic ones resolved
    assert main(["optimize", "--config", str(first / "config.toml"), "--out", str(second)]) == 0
    a, b = (json.loads((d / "result.json").read_text()) for d in (first, second))
    assert a["history"] == b["history"] and a["test_accuracy"] == b["test_accuracy"]
    assert main(["optimize", "--config", str(first / "config.toml"), "--out", str(third), "--no-quiet",
                 "--budget", "1600"]) == 0
    c = json.loads((third / "result.json").read_text())
    assert c["budget"] == 1600 and c["config"]["quiet"] is False and c["config"]["batch_size"] == 8
    capsys.readouterr()
    (tmp_path / "bad.toml").write_text("budjet = 5\n")
    assert main(["optimize", "--config", str(tmp_path / "bad.toml")]) == 2
    assert "bad.toml: unknown setting 'budjet'" in capsys.readouterr().err
