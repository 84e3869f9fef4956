"""The reference server on a real uvicorn, on a free loopback port: formats, limits, faults, a whole run."""

import base64
import io
import json
import os
import re
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

from backends import BackendWrapper, CountingBackend
from backends.base import BackendError
from backends.http import HTTPBackend, PartialAnswerWarning
from backends.http.codecs import png_base64
from backends.http.server import Faults, Limits, bind, create_app
from backends.toy import ToyBackend
from blackbox_vp import RunConfig, optimize

TOY = ToyBackend()


@contextmanager
def running(app) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free 127.0.0.1 port in a thread; yields its URL."""
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if server.started:
                break
            time.sleep(0.01)
        assert server.started, "uvicorn did not start within 5 s"
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with running(create_app(TOY, "toy", Limits(max_body_bytes=2**21, max_batch=64))) as address:
        yield address


@pytest.fixture
def images(rng) -> np.ndarray:
    return rng.integers(0, 256, (70, 64, 64, 3), dtype=np.uint8)


def stats(url: str) -> dict:
    return httpx.get(f"{url}/stats").json()


def png(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` RGB pixels (with almost no data: a bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + chunk(b"IEND", b""))


def test_health_metadata_and_the_model_list(url):
    assert httpx.get(f"{url}/health/live").json() == {"live": True}
    assert httpx.get(f"{url}/v2/health/ready").json() == {"ready": True}
    meta = httpx.get(f"{url}/bbvp/v1/model").json()
    assert meta == {"name": "toy", "labels": TOY.labels, "image_size": [64, 64], "max_batch": 64}
    assert httpx.get(f"{url}/v2/models").json() == {"models": ["toy"]}
    oip = httpx.get(f"{url}/v2/models/toy").json()
    assert oip["outputs"][0]["shape"] == [-1, 20] and oip["parameters"]["labels"] == TOY.labels
    assert httpx.get(f"{url}/v2/models/toy/ready").json()["ready"]
    missing = httpx.get(f"{url}/v2/models/resnet")
    assert missing.status_code == 404 and "'resnet' not found; this server serves 'toy'" in missing.json()["error"]


@pytest.mark.parametrize("format, path, options, exact", [
    ("bbvp", "", {}, True),
    ("oip-v2", "", {}, False),  # FP32 on the wire
    ("hf-image-classification", "/hf/models/toy", {"labels": TOY.labels, "image_size": (64, 64)}, False),
])
def test_each_format_gives_the_local_models_scores_and_is_counted(url, images, format, path, options, exact):
    model = HTTPBackend(url + path, format, **options)
    try:
        model.query(images)  # the first call grows the images per request from 1 to the server's max_batch
        assert model.sizer.limit == (1 if format.startswith("hf") else 64)
        before = stats(url)
        scores = model.query(images)
    finally:
        model.close()
    expected = TOY.query(images)
    if exact:
        np.testing.assert_array_equal(scores, expected)
    else:
        np.testing.assert_allclose(scores, expected, rtol=1e-6, atol=1e-9)
    after = stats(url)
    assert after["images"] - before["images"] == 70
    assert after["requests"] - before["requests"] == (70 if format.startswith("hf") else 2)  # max_batch 64


@pytest.mark.parametrize("format, path, batched", [
    ("kserve-v1", "", True),  # the server's URL: the model's is found in GET /v1/models
    ("torchserve", "/predictions/toy", False),
    ("openai-chat", "/openai", False),
])
def test_the_other_formats_give_the_local_models_scores_too(url, images, format, path, batched):
    """Every client codec is tested against this server: here the three formats without label metadata."""
    model = HTTPBackend(url + path, format, labels=TOY.labels, image_size=(64, 64), max_batch=8)
    before = stats(url)
    try:
        if format == "torchserve":  # the top 5 of 20 labels come back; the client fills the rest and says so
            with pytest.warns(PartialAnswerWarning, match="only 5 of its 20 labels"):
                scores = model.query(images[:12])
        else:
            scores = model.query(images[:12])
    finally:
        model.close()
    expected = TOY.query(images[:12])
    if format == "torchserve":
        top = np.argsort(-expected, axis=1)[:, :5]
        np.testing.assert_allclose(np.take_along_axis(scores, top, 1), np.take_along_axis(expected, top, 1),
                                   rtol=1e-9)
        assert (np.sort(scores, axis=1)[:, :15] <= np.take_along_axis(expected, top, 1)[:, -1:]).all()
    else:
        np.testing.assert_allclose(scores, expected, rtol=1e-9)  # all 20 labels named (chat: 20 top_logprobs)
    after = stats(url)
    assert after["images"] - before["images"] == 12
    requests = after["requests"] - before["requests"]
    assert requests == 12 if not batched else 2 < requests < 12  # batches grow from 1 image up to max_batch 8


def test_each_protocols_metadata_names_the_served_model(url):
    assert httpx.get(f"{url}/v1/models").json() == {"models": ["toy"]}
    assert httpx.get(f"{url}/v1/models/toy").json() == {"name": "toy", "ready": True}
    assert httpx.get(f"{url}/ping").json() == {"status": "Healthy"}
    assert [entry["id"] for entry in httpx.get(f"{url}/openai/v1/models").json()["data"]] == ["toy"]
    for path in ("/v1/models/resnet:predict", "/predictions/resnet"):
        missing = httpx.post(url + path, content=b"")
        assert missing.status_code == 404 and "'resnet' not found" in missing.json()["error"]


def test_zero_shot_scores_are_renormalized_over_the_candidates(url, images):
    candidates = TOY.labels[3:7]
    model = HTTPBackend(f"{url}/hf/models/toy", "hf-zero-shot", labels=candidates, image_size=(64, 64))
    try:
        scores = model.query(images[:4])
    finally:
        model.close()
    expected = TOY.query(images[:4])[:, 3:7]
    np.testing.assert_allclose(scores, expected / expected.sum(axis=1, keepdims=True), rtol=1e-9)


def test_oip_uint8_tensors_and_raw_hf_bytes_are_accepted(url, images):
    tensor = {"name": "image", "datatype": "UINT8", "shape": [2, 64, 64, 3], "data": images[:2].ravel().tolist()}
    answer = httpx.post(f"{url}/v2/models/toy/infer", json={"id": "r1", "inputs": [tensor]}).json()
    assert answer["id"] == "r1" and answer["outputs"][0]["shape"] == [2, 20]
    np.testing.assert_allclose(np.reshape(answer["outputs"][0]["data"], (2, 20)), TOY.query(images[:2]), rtol=1e-6)
    buffer = io.BytesIO()
    Image.fromarray(images[0]).save(buffer, format="PNG")
    top = httpx.post(f"{url}/hf/models/toy", content=buffer.getvalue(), headers={"Content-Type": "image/png"}).json()
    assert len(top) == 5 and top[0]["label"] == TOY.labels[int(TOY.query(images[:1])[0].argmax())]


@pytest.mark.parametrize("path, body, status, match", [
    ("/bbvp/v1/predict", {"images": ["x" * 2**21]}, 413, "request body of .* bytes is over this server's limit"),
    ("/bbvp/v1/predict", {"images": [png_base64(np.zeros((64, 64, 3), np.uint8))] * 65}, 413, "65 images"),
    ("/bbvp/v1/predict", {"images": [base64.b64encode(png(5000, 5000)).decode()]}, 413, "over this server's limit"),
    ("/bbvp/v1/predict", {"images": [base64.b64encode(png(100000, 100000)).decode()]}, 413, "decompression bomb"),
    ("/bbvp/v1/predict", {"images": [png_base64(np.zeros((32, 32, 3), np.uint8))]}, 400, "model takes 64x64"),
    ("/bbvp/v1/predict", {"images": ["not base64!"]}, 400, r"images\[0\] is not valid base64"),
    ("/bbvp/v1/predict", {"images": [base64.b64encode(b"GIF89a...").decode()]}, 400, "not a readable"),
    ("/bbvp/v1/predict", {"images": []}, 400, "no images"),
    ("/bbvp/v1/predict", {"pictures": []}, 400, "expected"),
    ("/v2/models/toy/infer", {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1], "data": [0]}]}, 400,
     "datatype 'FP32' not supported"),
    ("/v2/models/toy/infer", {"inputs": [{"name": "i", "datatype": "UINT8", "shape": [1, 64, 64, 3], "data": [300]}]},
     400, "integers in 0..255"),
    ("/hf/models/toy", {"inputs": png_base64(np.zeros((64, 64, 3), np.uint8)), "parameters": {"top_k": 0}}, 400,
     "top_k"),
    ("/hf/models/toy", {"inputs": png_base64(np.zeros((64, 64, 3), np.uint8)),
                        "parameters": {"candidate_labels": ["cat"]}}, 400, "candidate_labels"),
    ("/v1/models/toy:predict", {"instances": [{"b64": "x"}]}, 400, r"instances\[0\] must be"),
    ("/v1/models/toy:predict", {"instances": []}, 400, "no images"),
    ("/openai/v1/chat/completions", {"model": "gpt", "messages": []}, 404, "'gpt' not found"),
    ("/openai/v1/chat/completions", {"model": "toy", "messages": [{"role": "user", "content": "hi"}]}, 400,
     "hold 0 images"),
    ("/openai/v1/chat/completions", {"model": "toy", "logprobs": True, "top_logprobs": 21, "messages": []}, 400,
     "top_logprobs must be"),
    ("/openai/v1/chat/completions", {"model": "toy", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}, 400, "must be a data URL"),
])
def test_limits_and_bad_requests_get_clear_errors(url, path, body, status, match):
    before = stats(url)
    response = httpx.post(url + path, json=body)
    assert response.status_code == status
    assert re.search(match, response.json()["error"])
    after = stats(url)
    assert after["refused"] == before["refused"] + 1 and after["images"] == before["images"]


def test_malformed_json_is_refused(url):
    response = httpx.post(f"{url}/bbvp/v1/predict", content=b"{", headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]


def test_injected_faults_rate_limit_latency_and_truncation(images):
    faults = Faults(rate_limit_every=2, retry_after=7, latency=0.05)
    with running(create_app(TOY, "toy", faults=faults)) as address:
        body = {"images": [png_base64(images[0])]}
        first = httpx.post(f"{address}/bbvp/v1/predict", json=body)
        second = httpx.post(f"{address}/bbvp/v1/predict", json=body)
        assert first.status_code == 200 and first.elapsed.total_seconds() >= 0.05
        assert second.status_code == 429 and second.headers["Retry-After"] == "7"
        assert stats(address)["faults"] == {"429": 1} and stats(address)["images"] == 1
    with running(create_app(TOY, "toy", faults=Faults(failure_rate=1.0, failure_codes=(500,)))) as address:
        model = HTTPBackend(address, "bbvp", max_attempts=2, backoff=0.0)
        try:
            with pytest.raises(BackendError, match=r"answered 500 .*injected fault 500.*gave up after 2 attempts"):
                model.query(images[:3])
        finally:
            model.close()
    with running(create_app(TOY, "toy", faults=Faults(truncate_rate=1.0))) as address:
        model = HTTPBackend(address, "oip-v2")
        try:
            with pytest.raises(BackendError, match="answered 200 with malformed JSON"):
                model.query(images[:3])
            assert model.requests == 3  # model list, metadata, one inference: not retried
        finally:
            model.close()
        assert stats(address)["faults"] == {"truncated": 1} and stats(address)["images"] == 0


def test_bad_fault_and_limit_settings_are_refused():
    with pytest.raises(ValueError, match="failure_rate must be between 0 and 1"):
        Faults(failure_rate=1.5)
    with pytest.raises(ValueError, match="failure_codes"):
        Faults(failure_codes=(200,))
    with pytest.raises(ValueError, match="latency_per_image.* must be >= 0"):
        Faults(latency_per_image=-0.01)
    with pytest.raises(ValueError, match="positive"):
        Limits(max_batch=0)
    with pytest.raises(ValueError, match="model name"):
        create_app(TOY, "a/b")


def run_config(**overrides) -> RunConfig:
    settings = dict(backend="toy", optimizer="cma", mapping="frequency", data="digits", budget=1500, batch_size=8, grid=4, val=60, test=120, train=400,
                    quiet=True)
    return RunConfig(**(settings | overrides))


def test_a_run_over_oip_v2_with_faults_matches_the_run_without_and_is_counted_exactly():
    """30% 503s and a 429 (Retry-After: 1) every 20 requests change nothing but the time taken."""
    results, served = [], []
    for faults in (Faults(), Faults(failure_rate=0.3, failure_codes=(503,), rate_limit_every=20, retry_after=1)):
        with running(create_app(ToyBackend(), "toy", faults=faults)) as address:
            model = HTTPBackend(address, "oip-v2", max_attempts=12, backoff=0.01, max_backoff=0.1)
            try:
                results.append(optimize(run_config(), backend=model))
            finally:
                model.close()
            served.append(stats(address))
    clean, faulty = results
    assert faulty.test_accuracy == clean.test_accuracy and faulty.history == clean.history
    np.testing.assert_array_equal(faulty.theta, clean.theta)
    for result, counted in zip(results, served):
        assert counted["images"] == result.queries_used + result.test_queries
    assert served[0]["faults"] == {} and served[1]["faults"]["503"] > 0 and served[1]["faults"]["429"] > 0


def test_a_run_over_the_bbvp_protocol_equals_the_local_run():
    local = CountingBackend(ToyBackend())
    expected = optimize(run_config(), backend=local)
    with running(create_app(ToyBackend(), "toy")) as address:
        model = HTTPBackend(address, "bbvp")
        try:
            result = optimize(run_config(), backend=model)
        finally:
            model.close()
        assert stats(address)["images"] == local.images_sent
    assert result.history == expected.history and result.test_accuracy == expected.test_accuracy


def test_no_request_risks_the_timeout_so_the_server_scores_each_image_once():
    """Issue 18: at 10 ms an image and a 1 s timeout, a request of the server's max_batch (256 images) takes
    2.6 s. Requests start at one image and grow only while they stay under a quarter of the timeout, so
    none times out, and the server scores exactly the images the run receives, less those it asked for again
    (the cache, on by default, answers those: the test split under the kept prompt, here the initial one)."""
    expected = optimize(run_config())
    with running(create_app(ToyBackend(), "toy", faults=Faults(latency_per_image=0.01))) as address:
        result = optimize(run_config(backend=address, http_timeout=1.0))
        served = stats(address)
    assert result.cache["hits"] > 0 and result.cache["hits"] + result.cache["misses"] == (result.queries_used
                                                                                          + result.test_queries)
    assert served["images"] == result.cache["misses"] == result.backend_stats["images"]
    assert result.backend_stats["images_timed_out"] == 0 and result.backend_stats["retries"] == 0
    assert served["requests"] == result.backend_stats["requests"] - 1  # all but the metadata request
    assert result.history == expected.history and result.test_accuracy == expected.test_accuracy


def test_bbvp_serve_subprocess_and_an_optimize_run_against_it(tmp_path):
    """CI check of issue 5: `bbvp serve` in a subprocess, `bbvp optimize --backend URL --format oip-v2`."""
    bbvp = [sys.executable, "-m", "blackbox_vp.cli"]
    serve = bbvp + ["serve", "--backend", "toy", "--port", "0"]
    environment = os.environ | {"PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(serve, stdout=subprocess.PIPE, text=True, env=environment) as server:
        try:
            line = server.stdout.readline()  # "serving 'toy' (...) at http://127.0.0.1:PORT: ..."
            address = line.split(" at ", 1)[1].split(": ", 1)[0] if " at " in line else line
            assert address.startswith("http://127.0.0.1:"), line
            assert httpx.get(f"{address}/health/ready").status_code == 200  # listening before the line was printed
            out = tmp_path / "run"
            subprocess.run(bbvp + ["optimize", "--backend", address, "--optimizer", "guided", "--format", "oip-v2",
                                   "--data", "digits",
                                   "--budget", "1500", "--batch-size", "8", "--grid", "4", "--val", "60", "--test",
                                   "120", "--train", "400", "--quiet", "--out", str(out)], check=True, timeout=300)
            result = json.loads((out / "result.json").read_text())
            asked, cache = result["queries_used"] + result["test_queries"], result["cache"]
            assert stats(address)["images"] == cache["misses"] == asked - cache["hits"]  # repeats served from memory
        finally:
            server.terminate()


class Digits(BackendWrapper):
    """The toy model with ten labels named as digits' classes are: '0'..'9'."""

    def __init__(self):
        super().__init__(ToyBackend(num_labels=10, image_size=(224, 224)))  # as a Hugging Face client assumes
        self.labels = [str(i) for i in range(10)]


def test_a_zero_shot_server_is_asked_about_the_data_sets_classes_when_no_labels_are_given():
    """Issue 21: `--format hf-zero-shot` takes the candidate labels from --data unless --labels is given."""
    with running(create_app(Digits(), "digits")) as address:
        config = RunConfig(backend=f"{address}/hf/models/digits", format="hf-zero-shot", mapping="identity",
                           optimizer="cma", data="digits", budget=400, train=100, val=40, test=40, batch_size=4,
                           grid=2, quiet=True)
        result = optimize(config)
        served = stats(address)
    assert result.status == "finished" and served["images"] == result.cache["misses"] > 0
