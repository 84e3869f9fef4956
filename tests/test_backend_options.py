"""The backend a run builds from its settings: a partial API simulated (--top-k-only, --label-only) and the
cache (on by default, --no-cache), below the budget's counter."""

from __future__ import annotations

import json

import numpy as np
import pytest

from backends import CachingBackend, LabelOnlyBackend, TopKBackend
from backends.toy import ToyBackend
from blackbox_vp import RunConfig
from blackbox_vp.cli import main
from blackbox_vp.run import answers_as_configured


def test_the_settings_build_the_wrappers_in_order(rng):
    images = rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    model = answers_as_configured(ToyBackend(), RunConfig(top_k_only=3))
    assert isinstance(model, CachingBackend) and isinstance(model.inner, TopKBackend) and model.inner.k == 3
    scores = model.query(images)
    floor = scores.min(axis=1, keepdims=True)
    assert np.all((scores == floor).sum(axis=1) == 20 - 3)  # three labels keep their probability, 17 share the rest
    model.query(images)
    assert (model.hits, model.misses) == (4, 4)
    plain = answers_as_configured(ToyBackend(), RunConfig(label_only=True, cache=False))
    assert isinstance(plain, LabelOnlyBackend) and np.all(plain.query(images).max(axis=1) > 0.99)


@pytest.mark.parametrize("settings, match", [
    ({"top_k_only": 3, "label_only": True}, "--top-k-only and --label-only: choose one"),
    ({"optimizer": "whitebox", "top_k_only": 5}, "--optimizer whitebox takes gradients .* do not apply"),
    ({"top_k_only": 0}, "--top-k-only must be at least 1"),
])
def test_contradicting_settings_are_refused_before_anything_runs(settings, match):
    with pytest.raises(ValueError, match=match):
        RunConfig(**settings).check()


@pytest.mark.parametrize("flags, cached", [([], True), (["--no-cache"], False)])
def test_a_cli_run_reports_its_cache_and_the_partial_api_it_simulated(tmp_path, flags, cached):
    out = tmp_path / "run"
    assert main(["optimize", "--backend", "toy", "--optimizer", "guided", "--top-k-only", "5", "--budget", "1200",
                 "--train", "300", "--test", "60", "--grid", "4", "--quiet", "--out", str(out), *flags]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["config"]["top_k_only"] == 5 and result["config"]["cache"] is cached
    if cached:
        assert result["cache"]["hits"] + result["cache"]["misses"] == result["queries_used"] + result["test_queries"]
    else:
        assert result["cache"] is None
