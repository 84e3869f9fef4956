"""The white-box reference and the surrogate prior, on a tiny real torch model (no mocks)."""

import numpy as np
import pytest
import torch
from torch import nn

from backends import CountingBackend
from backends.torch_classifier import TorchClassifierBackend
from blackbox_vp import RunConfig, optimize
from blackbox_vp.data import load_task
from blackbox_vp.losses import cross_entropy
from blackbox_vp.mappings import FrequencyMapping
from blackbox_vp.prompts import PaddingPrompt
from blackbox_vp.surrogate import SurrogatePrior


def tiny_backend(seed: int) -> TorchClassifierBackend:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                          nn.Linear(128, 20))
    return TorchClassifierBackend(model, [f"tiny-{i}" for i in range(20)], (32, 32), max_batch=256)


def config(**overrides) -> RunConfig:
    settings = dict(optimizer="whitebox", mapping="frequency", data="digits", budget=4000, batch_size=32, grid=4, val=60, test=120,
                    train=400, lr=0.3, quiet=True)
    settings.update(overrides)
    return RunConfig(**settings)


def test_whitebox_improves_on_the_initial_prompt_and_stays_within_the_budget():
    counter = CountingBackend(tiny_backend(0))
    result = optimize(config(), backend=counter)
    assert result.val_accuracy > result.baseline_val_accuracy
    assert result.queries_used <= 4000
    assert result.val_accuracy >= result.baseline_val_accuracy
    # forwards are charged like queries: steps x batch + mapping + validations
    validations = len(result.history)
    assert result.queries_used == result.steps * 32 + 400 + validations * 60  # mapping: all 400 training images
    assert counter.images_sent == result.queries_used - result.steps * 32 + result.test_queries


def test_whitebox_on_a_model_without_gradients_is_refused_before_any_query():
    from backends.toy import ToyBackend

    counter = CountingBackend(ToyBackend())
    with pytest.raises(ValueError, match="needs a local torch backend"):
        optimize(config(budget=3000), backend=counter)


def test_surrogate_prior_points_downhill():
    backend = tiny_backend(1)
    prompt = PaddingPrompt((32, 32), width=4)
    data = load_task("digits", prompt.inner_size).subset(np.arange(64))
    theta = np.random.default_rng(0).normal(0, 0.5, prompt.dimension)
    scores = torch.from_numpy(backend.query(prompt.apply(theta, data.images)))
    mapping = FrequencyMapping().fit(scores, torch.from_numpy(data.labels), 10)
    prior = SurrogatePrior(backend, prompt, mapping, cross_entropy, data, batch_size=64, rng=np.random.default_rng(0))
    direction = prior.direction(theta)
    assert np.linalg.norm(direction) == pytest.approx(1.0)

    def loss(t: np.ndarray) -> float:
        probabilities = mapping.probabilities(torch.from_numpy(backend.query(prompt.apply(t, data.images))))
        return float(cross_entropy(probabilities, torch.from_numpy(data.labels)).mean())

    assert loss(theta + 0.05 * direction) < loss(theta) < loss(theta - 0.05 * direction)


def test_a_backend_with_1000_unnamed_labels_is_said_to_turn_the_automatic_prior_off():
    """Issue 20: without --labels an OIP v2 server's labels are '0'..'999', and --surrogate auto turned off silently."""
    from blackbox_vp import RunConfig
    from blackbox_vp.run_setup import surrogate_prior

    config = RunConfig(backend="http://model.test", optimizer="guided")
    with pytest.warns(UserWarning, match="scores 1000 labels but not by ImageNet's names, so the search goes without "
                                         "the surrogate's prior .* pass --labels"):
        assert surrogate_prior(config, None, None, None, [str(i) for i in range(1000)]) is None
    assert surrogate_prior(config, None, None, None, ["cat", "dog"]) is None  # another task's labels: nothing to say
