"""Scores as servers send them (--scores): probabilities, logits, log-probabilities; told from the first answer
under 'auto', refused with the fix named when they cannot be told, against an OIP v2 httpx.MockTransport server."""

from __future__ import annotations

import json
import logging

import httpx
import numpy as np
import pytest
from loopback import assert_same_run

from backends.base import BackendError
from backends.http import HTTPBackend
from backends.http.scores import detect, to_probabilities
from backends.toy import ToyBackend
from blackbox_vp import RunConfig, optimize

URL = "http://model.test/v2/models/m"
TOY = ToyBackend(num_labels=6, image_size=(16, 16))


def oip_server(answer, sent: list[int], model: ToyBackend = TOY):
    """An OIP v2 model taking UINT8 images and answering ``answer(probabilities)`` of the toy ``model`` (FP32)."""
    (height, width), count = model.image_size, model.num_labels
    meta = {"name": "m", "inputs": [{"name": "image", "datatype": "UINT8", "shape": [-1, height, width, 3]}],
            "outputs": [{"name": "out", "datatype": "FP32", "shape": [-1, count]}],
            "parameters": {"labels": model.labels}}

    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json=meta)
        tensor = json.loads(request.content)["inputs"][0]
        images = np.asarray(tensor["data"], dtype=np.uint8).reshape(tensor["shape"])
        sent.append(len(images))
        scores = answer(model.query(images))
        return httpx.Response(200, json={"outputs": [{"name": "out", "datatype": "FP32", "shape": list(scores.shape),
                                                      "data": scores.reshape(-1).tolist()}]})

    return handle


def served(answer, model: ToyBackend = TOY, **options) -> tuple[HTTPBackend, list[int]]:
    sent: list[int] = []
    transport = httpx.MockTransport(oip_server(answer, sent, model))
    return HTTPBackend(URL, "oip-v2", transport=transport, **options), sent


def logits(probabilities: np.ndarray) -> np.ndarray:
    return np.log(probabilities) * 1.0 + 3.0  # a logit layer: log-probabilities up to a constant per row


@pytest.fixture
def images(rng) -> np.ndarray:
    return rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)


@pytest.mark.parametrize("kind, answer", [("auto", logits), ("logits", logits), ("log-probabilities", np.log),
                                          ("auto", lambda p: p), ("probabilities", lambda p: p)])
def test_every_kind_of_scores_gives_the_models_probabilities(images, kind, answer, caplog):
    model, _ = served(answer, scores=kind)
    with caplog.at_level(logging.WARNING, logger="backends.http.client"):
        scores = model.query(images)
    assert np.allclose(scores, TOY.query(images), atol=1e-6) and np.allclose(scores.sum(axis=1), 1)
    told = model.stats()["scores"]
    assert told == ("logits" if answer is logits and kind == "auto" else kind if kind != "auto" else "probabilities")
    assert ("taken as logits" in caplog.text) == (kind == "auto" and answer is logits)  # said only when guessed
    model.close()


def test_scores_that_cannot_be_told_apart_are_refused_after_one_image_with_the_fix(images):
    model, sent = served(lambda p: p * 0.5)  # in [0, 1], rows summing to 0.5: sigmoids? a partial answer?
    with pytest.raises(BackendError, match=r"oip-v2 server at .*/infer: .* sums to 0\.5, not 1: .*--scores logits"):
        model.query(images)
    assert sent == [1]  # the first request carries one image: that is all it cost
    model.close()
    told, sent = served(lambda p: p * 0.5, scores="probabilities")  # said so: taken as they come
    assert np.allclose(told.query(images[:2]), TOY.query(images[:2]) * 0.5, atol=1e-6)
    told.close()


def test_negative_scores_said_to_be_probabilities_name_the_option(images):
    model, _ = served(logits, scores="probabilities")
    with pytest.raises(BackendError, match="negative scores, which probabilities cannot be; .* --scores logits"):
        model.query(images)
    model.close()


def test_an_unknown_kind_is_refused_before_any_request():
    never = httpx.MockTransport(lambda request: pytest.fail("no request expected"))
    with pytest.raises(ValueError, match="--scores 'softmax' is not a kind of scores; use one of auto, probabilities"):
        HTTPBackend(URL, "oip-v2", transport=never, scores="softmax")


def test_the_rules():
    assert detect(np.array([[0.2, 0.8], [1.0, 0.0]])) == "probabilities"
    assert detect(np.array([[0.2, 0.8], [2.0, 0.5]])) == "logits"  # above 1 somewhere
    assert detect(np.array([[-0.1, 0.3]])) == "logits"
    big = to_probabilities(np.array([[1000.0, 0.0, -1000.0]]), "logits")  # no overflow
    assert np.allclose(big, [[1.0, 0.0, 0.0]])


def test_a_run_over_a_logits_server_equals_the_local_run():
    """Issue 20's first failure: a model that answers logits stopped the run after 625 paid images."""
    settings = dict(backend="toy", optimizer="guided", data="digits", budget=1200, train=300, test=100, grid=4,
                    quiet=True, seed=1)
    expected = optimize(RunConfig(**settings), backend=ToyBackend())
    model, sent = served(logits, ToyBackend())
    try:
        result = optimize(RunConfig(**settings), backend=model)
    finally:
        model.close()
    assert result.backend_stats["scores"] == "logits" and sum(sent) == result.queries_used + result.test_queries
    assert_same_run(result, expected)
    np.testing.assert_array_equal(result.theta, expected.theta)
