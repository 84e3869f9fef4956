"""What Triton does that other OIP v2 servers do not, against an httpx.MockTransport server of its documented
shapes: the batch limit in ``GET .../config``, a 400 "batch-size must be <= N" beyond it, no ``GET /v2/models``
and a locked repository index, metadata without label names."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from backends.base import BackendError
from backends.http import HTTPBackend, UnnamedLabelsWarning
from backends.toy import ToyBackend

BASE = "http://triton.test"
MODEL = f"{BASE}/v2/models/m"
TOY = ToyBackend(num_labels=6, image_size=(16, 16))
LIMIT = 4


def triton(sizes: list[int], publish_config: bool = True):
    """A Triton-like server for the toy model: ``sizes`` gets the images of each request it scores."""
    meta = {"name": "m", "versions": ["1"], "platform": "onnxruntime_onnx",
            "inputs": [{"name": "input", "datatype": "UINT8", "shape": [-1, 16, 16, 3]}],
            "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 6]}]}
    config = {"name": "m", "max_batch_size": LIMIT, "input": [{"name": "input", "data_type": "TYPE_UINT8"}]}

    def handle(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v2/models/m" and request.method == "GET":
            return httpx.Response(200, json=meta)
        if path == "/v2/models/m/config" and publish_config:
            return httpx.Response(200, json=config)
        if path == "/v2/repository/index":
            return httpx.Response(403, json={"error": "This API is restricted, expecting header 'triton-access'"})
        if path == "/v2/models/m/infer":
            tensor = json.loads(request.content)["inputs"][0]
            if tensor["shape"][0] > LIMIT:
                return httpx.Response(400, json={"error": f"[request id: <id_unknown>] inference request batch-size "
                                                          f"must be <= {LIMIT} for 'm'"})
            images = np.asarray(tensor["data"], dtype=np.uint8).reshape(tensor["shape"])
            sizes.append(len(images))
            scores = np.log(TOY.query(images))  # a model's logits (up to a constant)
            return httpx.Response(200, json={"outputs": [{"name": "output", "datatype": "FP32", "shape": [len(images), 6],
                                                          "data": scores.reshape(-1).tolist()}]})
        return httpx.Response(404, json={"error": "Not Found"})

    return httpx.MockTransport(handle)


@pytest.fixture
def images(rng) -> np.ndarray:
    return rng.integers(0, 256, (30, 16, 16, 3), dtype=np.uint8)


def test_the_batch_limit_is_read_from_the_model_config(images):
    sizes: list[int] = []
    model = HTTPBackend(MODEL, "oip-v2", labels=TOY.labels, transport=triton(sizes))
    try:
        assert model.max_batch == LIMIT
        np.testing.assert_allclose(model.query(images), TOY.query(images), atol=1e-9)
    finally:
        model.close()
    assert max(sizes) == LIMIT and sum(sizes) == len(images)


@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_request_refused_for_its_batch_size_goes_again_in_parts_and_nothing_is_lost(images, caplog, concurrency):
    sizes: list[int] = []
    model = HTTPBackend(MODEL, "oip-v2", labels=TOY.labels, transport=triton(sizes, publish_config=False),
                        concurrency=concurrency)
    try:
        assert model.max_batch > 10**6  # nothing published: found out by asking
        np.testing.assert_allclose(model.query(images), TOY.query(images), atol=1e-9)
        assert model.max_batch == model.sizer.cap == LIMIT and model.stats()["images"] == len(images)
    finally:
        model.close()
    assert max(sizes) == LIMIT and sum(sizes) == len(images)  # every image scored once
    if concurrency == 1:
        assert sizes == [1, 2, 4] + [4, 4] + [4, 4, 4, 3]  # 8 refused and sent as 4 + 4, then requests of 4
    assert "takes at most 4 images per request: lowered to that" in caplog.text


def test_a_server_url_with_a_locked_index_names_the_model_url_to_give():
    with pytest.raises(BackendError, match=r"repository/index answered 403 .*no token was given: this metadata path "
                                           r"is locked; give the model's own URL \(for oip-v2: \.\.\./v2/models/MODEL"):
        HTTPBackend(BASE, "oip-v2", labels=TOY.labels, transport=triton([]))


def test_labels_that_are_not_published_nor_given_are_said_loudly_before_any_image():
    sizes: list[int] = []
    with pytest.warns(UnnamedLabelsWarning, match=r"publishes no label names, only 6 scores: they are named "
                                                  r"'0'..'5'. .*guided search's prior is off.*pass --labels FILE"):
        model = HTTPBackend(MODEL, "oip-v2", transport=triton(sizes))
    assert model.labels == [str(i) for i in range(6)] and sizes == []
    model.close()
