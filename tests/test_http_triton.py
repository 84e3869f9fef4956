"""What Triton does that other OIP v2 servers do not, against an httpx.MockTransport server of its documented
shapes: the batch limit in ``GET .../config``, a 400 "batch-size must be <= N" beyond it, no ``GET /v2/models``
and a locked repository index, metadata without label names."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from loopback import assert_same_run

from backends.base import BackendError
from backends.http import HTTPBackend, UnnamedLabelsWarning
from backends.toy import ToyBackend
from blackbox_vp import RunConfig, optimize

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


MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def fp32_triton(model: ToyBackend, received: list[np.ndarray]):
    """A Triton-like model taking FP32 NCHW pixels normalized by ImageNet's mean and std (logits out)."""
    (height, width), count = model.image_size, model.num_labels
    meta = {"name": "m", "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 3, height, width]}],
            "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, count]}]}

    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json=meta) if request.url.path == "/v2/models/m" else httpx.Response(404)
        tensor = json.loads(request.content)["inputs"][0]
        pixels = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"]).transpose(0, 2, 3, 1)
        images = np.round((pixels * np.float32(STD) + np.float32(MEAN)) * 255).astype(np.uint8)
        received.append(images)
        scores = np.log(model.query(images))
        return httpx.Response(200, json={"outputs": [{"name": "output", "datatype": "FP32", "shape": list(scores.shape),
                                                      "data": scores.reshape(-1).tolist()}]})

    return httpx.MockTransport(handle)


def fp32_backend(model: ToyBackend, received: list[np.ndarray], **options) -> HTTPBackend:
    return HTTPBackend(MODEL, "oip-v2", labels=model.labels, transport=fp32_triton(model, received), **options)


def test_fp32_input_without_the_models_normalization_is_refused_before_any_image():
    received: list[np.ndarray] = []
    with pytest.raises(BackendError, match=r"input 'input' takes FP32 \[-1, 3, 16, 16\], .* --input-mean "
                                           r"0\.485,0\.456,0\.406 --input-std 0\.229,0\.224,0\.225"):
        fp32_backend(TOY, received)
    assert received == []
    with pytest.raises(ValueError, match="--input-std '0,1,1' must be positive"):
        fp32_backend(TOY, received, input_mean="0.5,0.5,0.5", input_std="0,1,1")
    with pytest.raises(ValueError, match="--input-layout 'chw' must be nchw"):
        fp32_backend(TOY, received, input_mean="0.5,0.5,0.5", input_std="1,1,1", input_layout="chw")


def test_fp32_nchw_pixels_reach_the_model_exactly(images):
    received: list[np.ndarray] = []
    model = fp32_backend(TOY, received, input_mean=",".join(map(str, MEAN)), input_std=",".join(map(str, STD)))
    try:
        assert model.codec.float_input.layout == "nchw" and model.image_size == (16, 16)  # read from the shape
        np.testing.assert_allclose(model.query(images), TOY.query(images), atol=1e-9)
    finally:
        model.close()
    np.testing.assert_array_equal(np.concatenate(received), images)


def test_a_run_over_an_fp32_logits_server_equals_the_local_run():
    settings = dict(backend="toy", optimizer="guided", data="digits", budget=1200, train=300, test=100, grid=4,
                    quiet=True, seed=1)
    expected = optimize(RunConfig(**settings), backend=ToyBackend())
    model = fp32_backend(ToyBackend(), [], input_mean=",".join(map(str, MEAN)), input_std=",".join(map(str, STD)))
    try:
        result = optimize(RunConfig(**settings), backend=model)
    finally:
        model.close()
    assert_same_run(result, expected)
