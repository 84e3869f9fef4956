"""Registries: a name registered once (the decorator sets a class's name), prefixed names and a fallback
resolved one way, options read from the factory's signature; and the one error tree under BlackboxVPError."""

import inspect
import json

import numpy as np
import pytest

import backends.errors
from backends import BACKENDS, make_backend
from backends.errors import BlackboxVPError, ConfigurationError
from backends.registry import Registry
from blackbox_vp.data import TASKS
from blackbox_vp.optimizers import OPTIMIZERS, make_optimizer
from blackbox_vp.optimizers.cma import CMA
from blackbox_vp.optimizers.nevergrad_any import NevergradAny


def test_the_decorator_names_the_class_and_refuses_a_second_entry_of_a_name():
    things = Registry("thing", given=("seed",))

    @things.register("plain", "a plain entry")
    class Plain:
        def __init__(self, seed: int = 0, size: int = 3, *, label: str = "x"):
            self.size = size

    assert Plain.name == "plain" and things.get("plain") is Plain
    assert things.options("plain") == {"size": 3, "label": "x"}  # seed is given by the caller, not an option
    with pytest.raises(ConfigurationError, match="thing 'plain' is already registered"):
        things.register("plain", "again")(Plain)


def test_a_prefix_entry_takes_the_rest_of_the_name_and_the_fallback_what_it_accepts():
    things = Registry("thing")
    things.register("ng:", "any ng thing")(lambda rest, scale=1: (rest, scale))
    things.set_fallback("a word of three letters", lambda name: len(name) == 3, lambda name, scale=1: name * scale)
    assert things.get("ng:TBPSA")(scale=2) == ("TBPSA", 2)
    assert things.get("abc")(scale=2) == "abcabc"
    assert things.names() == ["ng:<...>"] and things.options("ng:<...>") == {"scale": 1}
    assert things.entry("ng:TBPSA") is things.entry("ng:<...>") is not None and things.entry("abc") is None
    assert things.options("ng:TBPSA") == {"scale": 1} and things.options("abc") == {}  # the fallback takes none
    assert things.parse_options("ng:TBPSA", "scale=3", "--thing-options") == {"scale": 3}
    with pytest.raises(ConfigurationError, match="unknown thing 'abcd'"):
        things.options("abcd")
    assert "ng:x" in things and "abc" in things and "abcd" not in things
    with pytest.raises(ConfigurationError, match="thing 'ng:' needs what follows the prefix: any ng thing"):
        things.get("ng:")
    with pytest.raises(ConfigurationError, match=r"unknown thing 'abcd'; choose one of: ng:<\.\.\.>, or a word of "
                                                  "three letters"):
        things.get("abcd")


def test_a_prefix_shows_its_example_name():
    things = Registry("thing")
    things.register("ng:", "any ng thing", example="ng:OnePlusOne")(lambda rest: rest)
    things.register("plain", "a plain entry")(lambda: None)
    assert [things.example(name) for name in things.names()] == ["ng:OnePlusOne", "plain"]
    assert OPTIMIZERS.example("ng:<...>") == "ng:OnePlusOne"


def test_the_project_registries_resolve_prefixes_and_folders(tmp_path):
    optimizer = make_optimizer("ng:TBPSA", np.zeros(4))
    assert isinstance(optimizer, NevergradAny) and optimizer.name == "ng:TBPSA" and CMA.name == "cma"
    assert OPTIMIZERS.factory_of("ng:TBPSA") is NevergradAny
    assert OPTIMIZERS.factory_of("shadow").trains_on_surrogate and OPTIMIZERS.factory_of("whitebox").needs_gradients
    assert not OPTIMIZERS.factory_of("guided").needs_gradients and OPTIMIZERS.factory_of("guided").accepts_prior
    assert {"hf:<...>", "clip:<...>", "http://<...>", "https://<...>"} <= set(BACKENDS.names())
    with pytest.raises(ConfigurationError, match="clip:DIR scores your class names, and none were given"):
        make_backend("clip:DIR")
    (tmp_path / "cats").mkdir()
    assert str(tmp_path) in TASKS and str(tmp_path / "nowhere") not in TASKS


def test_every_error_of_ours_is_a_blackbox_vp_error_and_keeps_its_builtin_base():
    tree = {name: cls for name, cls in inspect.getmembers(backends.errors, inspect.isclass)
            if cls.__module__ == "backends.errors"}
    assert set(tree) == set(backends.errors.__all__)
    assert all(issubclass(cls, BlackboxVPError) for cls in tree.values())
    assert issubclass(tree["ConfigurationError"], ValueError) and issubclass(tree["CodecError"], tree["BackendError"])
    assert issubclass(tree["BudgetExhausted"], RuntimeError) and issubclass(tree["RunDirectoryError"], OSError)
    for name in tree:  # the tree in the module docstring names each of them
        assert name in backends.errors.__doc__
    error = tree["BackendError"]("no answer", 503)
    assert error.status == 503 and tree["BackendError"]("local").status is None


def test_bbvp_list_shows_the_fallback_of_the_data_registry(capsys):
    from blackbox_vp.cli import main

    assert main(["list", "data"]) == 0
    out = capsys.readouterr().out
    assert "(other)" in out and "an existing folder ROOT/<class>/<image>" in out
    assert "squares" in out and "options: count=1800" in out


def test_entry_options_reach_the_run_from_the_cli_and_bad_ones_are_refused_before_any_image(tmp_path, capsys):
    from blackbox_vp.cli import main
    from blackbox_vp.journal import read_journal

    out = tmp_path / "run"
    common = ["optimize", "--backend", "toy", "--optimizer", "cma", "--budget", "1500", "--train", "300", "--val", "50",
              "--test", "100", "--grid", "4", "--batch-size", "8", "--quiet"]
    assert main([*common, "--optimizer-options", "sigma=0.2,popsize=6", "--mapping", "multilabel",
                 "--mapping-options", "labels_per_class=2", "--loss", "focal", "--loss-options", "gamma=1",
                 "--out", str(out)]) == 0
    start = next(e for e in read_journal(out / "journal.jsonl") if e["event"] == "start")
    assert start["step_images"] == 6 * 8  # the population asked for, 8 images each
    prompt = json.loads((out / "prompt.json").read_text())
    assert all(len(labels) == 2 for labels in prompt["mapping"]["source_labels"])
    assert 'optimizer_options = "sigma=0.2,popsize=6"' in (out / "config.toml").read_text()
    for flag, value, message in [("--optimizer-options", "lr=1", "optimizer 'cma' has no option 'lr'; its options: "
                                  "sigma=0.5, popsize=None"),
                                 ("--optimizer-options", "sigma=high", "option sigma takes a float"),
                                 ("--mapping-options", "l2", "'l2' is not key=value")]:
        assert main([*common, flag, value, "--out", str(tmp_path / "refused")]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "refused" / "journal.jsonl").exists()
