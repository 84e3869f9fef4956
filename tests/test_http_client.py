"""HTTPBackend against httpx.MockTransport handlers: batching and request sizes, concurrency, retries, timeouts,
errors, tokens, rate, cost."""

import asyncio
import base64
import inspect
import io
import json
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import numpy as np
import pytest
from PIL import Image

from backends import CountingBackend
from backends.base import BackendError
from backends.http import HTTPBackend, UnnamedLabelsWarning, is_url, make_http_backend
from backends.http.client import RateLimiter, RequestSizer, parse_retry_after
from backends.toy import ToyBackend

URL = "http://model.test"
TOY = ToyBackend(num_labels=6, image_size=(16, 16))


def decode(text: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(text))) as image:
        return np.asarray(image)


def bbvp_server(max_batch: int | None = None, log: list | None = None, seconds_per_image: float = 0.0):
    """A handler speaking the bbvp protocol for the toy model; records the images of each inference request
    in ``log`` and answers after ``seconds_per_image`` x images."""

    async def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/bbvp/v1/model":
            meta = {"labels": TOY.labels, "image_size": [16, 16]}
            return httpx.Response(200, json=meta | ({"max_batch": max_batch} if max_batch else {}))
        images = np.stack([decode(x) for x in json.loads(request.content)["images"]])
        if log is not None:
            log.append(len(images))
        await asyncio.sleep(seconds_per_image * len(images))
        return httpx.Response(200, json={"scores": TOY.query(images).tolist()})

    return handle


def sequence(*responses, then=None):
    """A handler answering the bbvp metadata, then ``responses`` in order (Response or exception), then ``then``."""
    queue = list(responses)
    meta = bbvp_server()

    async def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return await meta(request)
        answer = queue.pop(0) if queue else then(request)
        if inspect.isawaitable(answer):
            answer = await answer
        if isinstance(answer, Exception):
            raise answer
        return answer

    return handle


ok = bbvp_server()


def backend(handler, **options) -> HTTPBackend:
    options.setdefault("backoff", 0.0)
    return HTTPBackend(URL, "bbvp", transport=httpx.MockTransport(handler), **options)


@pytest.fixture
def images(rng) -> np.ndarray:
    return rng.integers(0, 256, (10, 16, 16, 3), dtype=np.uint8)


def test_the_first_request_carries_one_image_and_a_later_call_goes_out_as_one_request(images):
    log = []
    model = backend(bbvp_server(log=log))
    try:
        np.testing.assert_array_equal(model.query(images), TOY.query(images))
        # one image alone; then 4 requests in flight, cut at the limit of the moment (2, doubled by each answer)
        assert log == [1, 2, 2, 2, 2, 1] and model.sizer.limit == 64
        np.testing.assert_array_equal(model.query(images), TOY.query(images))
        assert log[6:] == [10] and model.labels == TOY.labels and model.image_size == (16, 16)
        assert model.stats() == {"requests": 8, "retries": 0, "failures": 0, "images_sent": 20, "images_timed_out": 0,
                                 "images": 20, "cost": 0.0, "scores": "probabilities"}  # metadata + 6 requests + one batch
        assert model.query(images[:0]).shape == (0, 6) and model.requests == 8
    finally:
        model.close()
        model.close()
    assert not model._loop.thread.is_alive()


def test_the_servers_max_batch_splits_a_call_in_order(images):
    log = []
    model = backend(bbvp_server(max_batch=4, log=log))
    try:
        model.query(images)  # the first call grows the limit from 1 (test above)
        log.clear()
        np.testing.assert_array_equal(model.query(images), TOY.query(images))
        assert sorted(log) == [2, 4, 4] and model.max_batch == model.sizer.limit == 4
    finally:
        model.close()
    model = backend(bbvp_server(max_batch=4, log=log), max_batch=3)  # the smaller limit wins
    try:
        model.query(images)
        log.clear()
        model.query(images)
        assert sorted(log) == [1, 3, 3, 3]
    finally:
        model.close()


def test_request_sizes_start_at_one_image_and_double_with_each_answer_up_to_the_cap(rng):
    log = []
    batch = rng.integers(0, 256, (60, 16, 16, 3), dtype=np.uint8)
    model = backend(bbvp_server(log=log), max_batch=16, concurrency=1)
    try:
        np.testing.assert_array_equal(model.query(batch), TOY.query(batch))
        assert log == [1, 2, 4, 8, 16, 16, 13]
    finally:
        model.close()


def test_request_sizes_stay_under_a_quarter_of_the_timeout_at_the_slowest_recent_answer(rng):
    # 20 ms per image and a 1 s timeout: a request of 12 images takes 0.24 s, a quarter of it; the first
    # request's fixed cost (encoding, the round trip) may make one image look a little slower.
    log = []
    batch = rng.integers(0, 256, (100, 16, 16, 3), dtype=np.uint8)
    model = backend(bbvp_server(log=log, seconds_per_image=0.02), timeout=1.0, concurrency=1)
    try:
        model.query(batch)
        assert log[:4] == [1, 2, 4, 8] and sum(log) == 100
        assert all(8 <= size <= 12 for size in log[4:-1]) and log[-1] <= 12
        assert model.stats()["images_timed_out"] == 0
    finally:
        model.close()


def test_the_request_sizer_rule():
    sizer = RequestSizer(cap=100, timeout=4.0)  # a request should take at most 1 s
    sizes = []
    for _ in range(8):
        sizes.append(sizer.limit)
        sizer.answered(sizer.limit, 0.05 * sizer.limit)  # 50 ms per image: 20 images take 1 s
    assert sizes == [1, 2, 4, 8, 16, 20, 20, 20]
    sizer.timed_out()
    assert sizer.limit == 10
    sizer.answered(10, 5.0)  # 0.5 s per image: 2 images a request
    assert sizer.limit == 2
    for _ in range(RequestSizer.RECENT - 1):
        sizer.answered(2, 0.1)  # fast again, but the slow answer is still among the last RECENT
        assert sizer.limit == 2
    sizer.answered(2, 0.1)  # ... and now it is not
    assert sizer.limit == 4
    for _ in range(5):
        sizer.timed_out()
    assert sizer.limit == 1  # never below 1
    small = RequestSizer(cap=3, timeout=60.0)
    for _ in range(4):
        small.answered(small.limit, 0.001)
    assert small.limit == 3  # never above the cap


def test_one_image_formats_send_concurrently_within_the_limit(images):
    in_flight, peak = 0, 0

    async def handle(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        image = decode(json.loads(request.content)["inputs"])
        scores = TOY.query(image[None])[0]
        return httpx.Response(200, json=[{"label": label, "score": float(s)} for label, s in zip(TOY.labels, scores)])

    model = HTTPBackend(URL + "/models/toy", "hf-image-classification", labels=TOY.labels, image_size=(16, 16),
                        concurrency=3, transport=httpx.MockTransport(handle))
    try:
        np.testing.assert_allclose(model.query(images), TOY.query(images))
        assert model.requests == 10 and peak == 3
    finally:
        model.close()


def test_requests_leave_in_the_calls_order_while_images_are_encoded_alongside():
    # Images are encoded on a worker thread while earlier requests are in flight; one image per
    # request and four in flight, the server still receives them in the order of the call.
    arrived = []

    async def handle(request: httpx.Request) -> httpx.Response:
        image = decode(json.loads(request.content)["inputs"])
        arrived.append(int(image[0, 0, 0]))
        await asyncio.sleep(0.005)
        scores = TOY.query(image[None])[0]
        return httpx.Response(200, json=[{"label": label, "score": float(s)} for label, s in zip(TOY.labels, scores)])

    batch = np.zeros((40, 16, 16, 3), dtype=np.uint8) + np.arange(40, dtype=np.uint8)[:, None, None, None]
    model = HTTPBackend(URL + "/models/toy", "hf-image-classification", labels=TOY.labels, image_size=(16, 16),
                        concurrency=4, transport=httpx.MockTransport(handle))
    try:
        np.testing.assert_allclose(model.query(batch), TOY.query(batch))
        assert arrived == list(range(40))
    finally:
        model.close()


def test_retryable_statuses_and_connection_errors_are_retried(images):
    answers = [httpx.Response(503), httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.Response(429),
               httpx.Response(502)]
    log = []
    model = backend(sequence(*answers, then=bbvp_server(log=log)))
    try:
        np.testing.assert_array_equal(model.query(images), TOY.query(images))
        assert model.retries == 5 and model.images_answered == 10 and log[0] == 1  # the faults met the first request
        assert model.images_timed_out == 1  # the read timeout's image; the refused connection sent nothing
    finally:
        model.close()


def test_a_timed_out_attempt_counts_its_images_as_possibly_paid_and_halves_the_limit(rng):
    batch = rng.integers(0, 256, (24, 16, 16, 3), dtype=np.uint8)
    log, pending = [], []
    served = bbvp_server(log=log)

    async def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and pending:
            raise pending.pop(0)
        return await served(request)

    model = backend(handle, max_batch=16, concurrency=1, max_attempts=1)
    try:
        model.query(batch[:15])  # 1 + 2 + 4 + 8 images: the limit is now 16
        assert model.sizer.limit == 16
        pending += [httpx.ReadTimeout("slow"), httpx.ConnectTimeout("no connection"), httpx.ReadTimeout("slow again")]
        with pytest.raises(BackendError, match="ReadTimeout"):
            model.query(batch[:16])
        assert model.stats()["images_timed_out"] == 16 and model.sizer.limit == 8
        with pytest.raises(BackendError, match="ConnectTimeout"):
            model.query(batch[:16])  # 8 images, but nothing went out: not counted, the limit stays
        assert model.stats()["images_timed_out"] == 16 and model.sizer.limit == 8
        model.max_attempts = 2
        log.clear()
        np.testing.assert_array_equal(model.query(batch), TOY.query(batch))
        # the first 8 images timed out (the limit halved to 4), their retry was answered (doubled back to 8)
        assert log == [8, 8, 8] and model.stats() | {"requests": 0} == {
            "requests": 0, "retries": 1, "failures": 3, "images_sent": 15 + 16 + 8 + 8 + 24,
            "images_timed_out": 16 + 8, "images": 15 + 24, "cost": 0.0, "scores": "probabilities"}
    finally:
        model.close()


def test_attempts_are_capped_with_a_clear_error(images):
    model = backend(sequence(then=lambda r: httpx.Response(503, text="queue full")), max_attempts=3)
    try:
        with pytest.raises(BackendError, match=r"http://model.test/bbvp/v1/predict answered 503 Service "
                                               r"Unavailable: 'queue full' \(gave up after 3 attempts\)"):
            model.query(images)
        assert model.requests == 1 + 3 and model.images_answered == 0
    finally:
        model.close()


def test_an_unreachable_server_fails_after_the_attempts(images):
    def refuse(request):
        raise httpx.ConnectError("connection refused")

    with pytest.raises(BackendError, match=r"no answer from http://model.test/bbvp/v1/model: ConnectError.*"
                                           r"gave up after 2 attempts"):
        backend(refuse, max_attempts=2)


def test_retry_after_seconds_are_honoured_and_clamped(images):
    model = backend(sequence(httpx.Response(429, headers={"Retry-After": "1"}), then=ok))
    try:
        started = time.monotonic()
        model.query(images)
        assert time.monotonic() - started >= 0.95
    finally:
        model.close()
    model = backend(sequence(httpx.Response(503, headers={"Retry-After": "3600"}), then=ok), max_retry_after=0.2)
    try:
        started = time.monotonic()
        model.query(images)
        assert 0.18 <= time.monotonic() - started < 5
    finally:
        model.close()


def test_hugging_face_estimated_time_is_waited(images):
    loading = httpx.Response(503, json={"error": "Model is currently loading", "estimated_time": 0.3})
    model = backend(sequence(loading, then=ok))
    try:
        started = time.monotonic()
        model.query(images)
        assert time.monotonic() - started >= 0.28
    finally:
        model.close()


def test_retry_after_parses_seconds_and_http_dates():
    now = datetime(2025, 1, 1, tzinfo=UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now=now) == 30.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None and parse_retry_after("-3") is None


@pytest.mark.parametrize("status, body, match", [
    (404, "no such model", r"answered 404 Not Found: 'no such model'; check the URL and --format"),
    (401, "", r"answered 401 Unauthorized: \(empty body\); .*--token-env"),
    (400, "x" * 1000, r"answered 400 Bad Request: 'x{200}\.\.\.'$"),
    (301, "", r"answered 301 .*redirects are not followed: use the final URL \(https://elsewhere\)"),
])
def test_other_statuses_fail_at_once_naming_url_status_and_body(images, status, body, match):
    answer = httpx.Response(status, text=body, headers={"Location": "https://elsewhere"})
    model = backend(sequence(answer, then=ok))
    try:
        with pytest.raises(BackendError, match="http://model.test/bbvp/v1/predict " + match):
            model.query(images)
        assert model.requests == 2  # metadata + the one refused request, not retried
    finally:
        model.close()


@pytest.mark.parametrize("content, match", [
    (b'{"scores": [[0.1, 0.2', "malformed JSON"),
    (b'{"scores": [[NaN, 0, 0, 0, 0, 0]]}', "NaN"),
    (b'{"scores": [[-0.1, 0, 0, 0, 0, 1.1]]}', "negative"),
    (b'{"scores": [[0.5, 0.5]]}', "does not fit the format.*expected 1 x 6"),
    (b'{"error": "busy"}', "no 'scores'"),
])
def test_bad_answers_are_errors_not_garbage(images, content, match):
    model = backend(sequence(httpx.Response(200, content=content), then=ok))
    try:
        with pytest.raises(BackendError, match=match):
            model.query(images[:1])
    finally:
        model.close()


def test_unknown_labels_in_keyed_answers_are_errors(images):
    answer = httpx.Response(200, json={"tabby": 0.9})
    model = HTTPBackend(URL + "/predictions/m", "torchserve", labels=TOY.labels,
                        transport=httpx.MockTransport(lambda r: answer))
    try:
        with pytest.raises(BackendError, match=r"torchserve answer from .*/predictions/m.*'tabby' is not one of the 6"):
            model.query(images[:1])
    finally:
        model.close()


def test_labels_come_from_metadata_a_file_or_the_output_shape(tmp_path):
    meta = {"name": "m", "outputs": [{"name": "scores", "datatype": "FP32", "shape": [-1, 3]}]}
    oip = httpx.MockTransport(lambda r: httpx.Response(200, json=meta))
    with pytest.warns(UnnamedLabelsWarning, match="publishes no label names"):
        model = HTTPBackend(URL + "/v2/models/m", "oip-v2", transport=oip)
    assert model.labels == ["0", "1", "2"] and model.image_size == (224, 224) and model.max_batch > 10**6
    model.close()
    with pytest.raises(ValueError, match="2 labels given, but oip-v2 server at .* scores 3"):
        HTTPBackend(URL + "/v2/models/m", "oip-v2", labels=["a", "b"], transport=oip)
    with pytest.raises(ValueError, match="do not match the 6 that bbvp server .* publishes .*index 1"):
        backend(ok, labels=[TOY.labels[0], "other"] + TOY.labels[2:])
    with pytest.raises(ValueError, match="image_size .* given, but .* takes"):
        backend(ok, image_size=(8, 8))
    never = httpx.MockTransport(lambda r: pytest.fail("no request expected"))
    with pytest.raises(ValueError, match="publishes no label names; pass a labels file"):
        HTTPBackend(URL + "/predictions/m", "torchserve", transport=never)
    repeated = HTTPBackend(URL + "/predictions/m", "torchserve", labels=["a", "b", "a"], transport=never)
    assert repeated.labels == ["a", "b", "a"]  # taken (a keyed answer's 'a' scores the first; see test_http_torchserve)
    repeated.close()
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(TOY.labels))
    model = make_http_backend(URL + "/models/m", "hf-image-classification", labels=str(labels), http_attempts=2)
    assert model.labels == TOY.labels and model.max_batch == 1 and model.max_attempts == 2
    model.close()


def test_the_token_is_sent_but_never_shown(images, monkeypatch):
    secret = "sk-very-secret-123"
    monkeypatch.setenv("BBVP_TEST_TOKEN", secret)
    seen = []

    def echo(request: httpx.Request) -> httpx.Response:
        seen.append(dict(request.headers))
        if request.method == "GET":
            return ok(request)
        return httpx.Response(403, text=f"token {request.headers.get('x-api-key')} is not allowed")

    model = backend(echo, token_env="BBVP_TEST_TOKEN")
    try:
        assert seen[0]["authorization"] == f"Bearer {secret}"
    finally:
        model.close()
    model = backend(echo, token_env="BBVP_TEST_TOKEN", token_header="X-API-Key")
    try:
        assert seen[-1]["x-api-key"] == secret and "authorization" not in seen[-1]
        with pytest.raises(BackendError) as error:
            model.query(images)
        assert secret not in str(error.value) and "token [token] is not allowed" in str(error.value)
        assert "the token was refused" in str(error.value)  # given, so it is the one to check
        assert secret not in repr(model) and secret not in str(model.stats())
    finally:
        model.close()
    monkeypatch.delenv("BBVP_TEST_TOKEN")
    with pytest.raises(ValueError, match="environment variable BBVP_TEST_TOKEN .* is empty or not set"):
        backend(echo, token_env="BBVP_TEST_TOKEN")


@pytest.mark.filterwarnings("ignore::backends.http.PartialAnswerWarning")  # one label of six comes back
def test_rate_limits_space_requests_and_images(images):
    model = HTTPBackend(URL + "/predictions/m", "torchserve", labels=TOY.labels, rate_limit=20,
                        transport=httpx.MockTransport(lambda r: httpx.Response(200, json={TOY.labels[0]: 1.0})))
    try:
        started = time.monotonic()
        model.query(images[:5])  # 5 requests, 4 gaps of 1/20 s
        assert time.monotonic() - started >= 0.19
    finally:
        model.close()
    model = backend(bbvp_server(max_batch=5), image_rate_limit=50)
    try:
        started = time.monotonic()
        model.query(images)  # metadata (0 images), then 1, 2, 2, 2, 2, 1 images: 9/50 s before the last request
        assert time.monotonic() - started >= 0.175
    finally:
        model.close()
    with pytest.raises(ValueError, match="rate_limit must be a positive number"):
        RateLimiter(requests_per_second=0)


def test_cost_counts_answered_images_and_survives_the_counting_wrapper(images):
    model = backend(sequence(httpx.Response(503), then=ok), cost_per_image=0.002)
    counted = CountingBackend(model, budget=100)
    try:
        counted.query(images)
        counted.query(images[:3])
        assert counted.images_sent == model.images_answered == 13
        assert model.spent == pytest.approx(0.026) and model.stats()["cost"] == pytest.approx(0.026)
        assert model.stats()["requests"] == 1 + 1 + 6 + 1  # metadata, one 503, 6 requests for the first call
        # (1, 2, 2, 2, 2 and 1 images) and one for the second
    finally:
        counted.close()


def test_bad_arguments_are_refused_before_any_request():
    never = httpx.MockTransport(lambda r: pytest.fail("no request expected"))
    with pytest.raises(ValueError, match="must start with http:// or https://"):
        HTTPBackend("ftp://x", transport=never)
    with pytest.raises(ValueError, match="unknown format 'grpc'; choose one of: bbvp, .*oip-v2"):
        HTTPBackend(URL, "grpc", transport=never)
    with pytest.raises(ValueError, match="concurrency must be at least 1"):
        HTTPBackend(URL, concurrency=0, transport=never)
    assert is_url("https://x") and not is_url("toy")
