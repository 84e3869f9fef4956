"""The HTTP fault matrix on real loopback sockets: each fault is retried to the clean result, or stops the
call with a clear error; the budget is never exceeded and every failed attempt is reported.

Servers: ``loopback.ScriptedServer`` (a raw-socket bbvp server whose script picks each answer), the
reference server's own fault injection, and a reference server in a subprocess killed with SIGKILL
mid-request and restarted on the same port.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
from loopback import Fault, ScriptedServer, Switched, always, running

from backends import BudgetExhausted, CountingBackend
from backends.base import BackendError
from backends.http import HTTPBackend
from backends.http.client import RequestSizer
from backends.http.server import Faults, create_app
from backends.toy import ToyBackend

TOY = ToyBackend(num_labels=5, image_size=(8, 8))
BUDGET = 25
TIMEOUT = 3.0  # the client's read timeout, far above a loaded CI machine's slowest answer; a stall is longer
SIZER_TIMEOUT = 60.0  # what the request sizer times answers against: requests grow only while answers come within a
# quarter of it, and on a loaded 2-core machine loopback answers came slower than a quarter of TIMEOUT per 3 images,
# which kept the first call's requests at 3 images and failed a precondition that has nothing to do with faults
FIRST_CALL = 6  # requests of a client's first call of 12 images: 1 image alone, then 2, 2, 2, 2 and 3 (RequestSizer)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)


def client(url: str, events: list, **options) -> HTTPBackend:
    settings = dict(max_attempts=8, backoff=0.01, max_backoff=0.05, timeout=TIMEOUT, on_failure=events.append)
    model = HTTPBackend(url, "bbvp", **(settings | options))
    model.sizer = RequestSizer(model.max_batch, SIZER_TIMEOUT)  # requests sized as on an idle machine, whatever the load
    return model


def status(code: int, body: bytes = b'{"error": "busy"}', **headers: str) -> Fault:
    return Fault("status", status=code, body=body, headers=tuple((k.replace("_", "-"), v) for k, v in headers.items()))


STALL = Fault("stall", seconds=TIMEOUT + 0.4)

RECOVERED = {
    "429 with Retry-After": [status(429, Retry_After="1")],
    "503 burst": [status(503)] * 4,
    "500": [status(500, b"oops")] * 2,
    "502 and 504": [status(502), status(504)],
    "408": [status(408)],
    "read timeout": [STALL, STALL],
    "connection reset": [Fault("reset")] * 2,
    "closed without an answer": [Fault("close")],
    "body cut short": [Fault("cut")] * 2,
    "a mix of all": [status(503), Fault("reset"), STALL, Fault("cut"), status(429, Retry_After="0"), Fault("close")],
}


@pytest.mark.parametrize("faults", RECOVERED.values(), ids=RECOVERED.keys())
def test_retryable_faults_recover_to_the_clean_scores_within_the_budget(images, faults):
    events: list[dict] = []
    script = Switched(*faults)
    with ScriptedServer(TOY, script) as server:
        model = client(server.url, events)
        counted = CountingBackend(model, budget=BUDGET)
        try:
            started = time.monotonic()
            first = counted.query(images)
            assert server.received == FIRST_CALL and model.sizer.limit >= 6
            script.start(server.received)
            second = counted.query(images[:6])  # one request, which meets the faults
            elapsed = time.monotonic() - started
            np.testing.assert_array_equal(first, TOY.query(images))  # the same scores as with no fault
            np.testing.assert_array_equal(second, TOY.query(images[:6]))
            with pytest.raises(BudgetExhausted):
                counted.query(images)  # 18 + 12 > 25: refused before sending
            assert server.received == FIRST_CALL + len(faults) + 1  # ... so the server never saw it
        finally:
            counted.close()
    assert counted.images_sent == server.images_answered == 18 <= BUDGET
    stalls = faults.count(STALL)
    assert model.stats() | {"cost": 0} == {"requests": 1 + FIRST_CALL + len(faults) + 1, "retries": len(faults),
                                           "failures": len(faults), "images_sent": 12 + 6 * (len(faults) + 1),
                                           "images_timed_out": 6 * stalls, "images": 18, "cost": 0, "scores": "probabilities"}
    assert len(events) == len(faults) and all(event["retry"] and event["images"] == 6 for event in events)
    assert [event["attempt"] for event in events] == list(range(1, len(faults) + 1))
    assert all(event["url"] == f"{server.url}/bbvp/v1/predict" for event in events)
    if "Retry-After" in str(faults[0].headers) and faults[0].headers[0][1] == "1":
        assert elapsed >= 0.95  # the server's Retry-After was waited
    if STALL in faults:
        assert any("ReadTimeout" in event["error"] and event["status"] is None for event in events)


NEVER_RECOVER = {
    "500": (status(500, b"model crashed"), r"answered 500 Internal Server Error: 'model crashed' \(gave up after 3"),
    "503": (status(503), r"answered 503 Service Unavailable: .*gave up after 3 attempts"),
    "429 without Retry-After": (status(429), r"answered 429 Too Many Requests.*gave up after 3 attempts"),
    "read timeout": (STALL, r"no answer from .*: ReadTimeout: no details \(gave up after 3 attempts\).*server is up"),
    "connection reset": (Fault("reset"), r"no answer from .*: (ReadError|RemoteProtocolError).*gave up after 3"),
    "body cut short": (Fault("cut"), r"no answer from .*: RemoteProtocolError.*gave up after 3"),
}


@pytest.mark.parametrize("fault, match", NEVER_RECOVER.values(), ids=NEVER_RECOVER.keys())
def test_persistent_faults_stop_after_the_attempts_with_the_url_and_status(images, fault, match):
    events: list[dict] = []
    script = Switched(*[fault] * 10)
    with ScriptedServer(TOY, script) as server:
        model = client(server.url, events, max_attempts=3)
        counted = CountingBackend(model, budget=BUDGET)
        try:
            counted.query(images)
            assert server.received == FIRST_CALL and model.sizer.limit >= 12
            script.start(server.received)
            with pytest.raises(BackendError, match=match) as error:
                counted.query(images)  # one request of 12 images
        finally:
            counted.close()
    assert f"{server.url}/bbvp/v1/predict" in str(error.value)
    assert server.received == FIRST_CALL + 3  # bounded: exactly max_attempts tries
    assert getattr(error.value, "status", None) == (fault.status if fault.kind == "status" else None)
    assert counted.images_sent == server.images_answered == 12  # the failed call is not counted as answered
    assert model.images_timed_out == (36 if fault is STALL else 0)  # each of the 3 tries, possibly scored
    assert [(e["attempt"], e["retry"], e["images"]) for e in events] == [(1, True, 12), (2, True, 12), (3, False, 12)]


REFUSED = {
    "400": (status(400, b'{"error": "bad image"}'), r"answered 400 Bad Request: '{\"error\": \"bad image\"}'"),
    "401": (status(401), r"answered 401 Unauthorized: .*--token-env"),
    "403": (status(403), r"answered 403 Forbidden: .*no token was given; if the server wants one, .*--token-env"),
    "404": (status(404), r"answered 404 Not Found: .*check the URL and --format"),
    "413": (status(413), r"answered 413 Content Too Large: .*--http-max-batch"),
    "invalid JSON": (Fault("body", body=b'{"scores": [[0.1, 0.2'), r"answered 200 with malformed JSON"),
    "truncated JSON": (Fault("body", body=b'{"scores": [[0.1, 0.2, 0.3, 0.2, 0.2]'), r"malformed JSON"),
    "an empty 200": (Fault("body", body=b""), r"answered 200 with malformed JSON \(0 bytes"),
    "too few rows": (Fault("body", body=json.dumps({"scores": [[0.2] * 5] * 11}).encode()),
                     r"does not fit the format: 'scores' has shape \[11, 5\], expected 12 x 5"),
    "too many labels": (Fault("body", body=json.dumps({"scores": [[0.1] * 6] * 12}).encode()),
                        r"'scores' has shape \[12, 6\], expected 12 x 5 \(12 images, 5 labels\)"),
    "NaN scores": (Fault("body", body=b'{"scores": [' + b",".join([b"[NaN, 0.1, 0.2, 0.3, 0.4]"] * 12) + b"]}"),
                   r"returned NaN or infinite scores"),
    "infinite scores": (Fault("body", body=b'{"scores": [' + b",".join([b"[Infinity, 0, 0, 0, 0]"] * 12) + b"]}"),
                        r"returned NaN or infinite scores"),
    "negative scores": (Fault("body", body=json.dumps({"scores": [[-0.1, 0.3, 0.3, 0.3, 0.2]] * 12}).encode()),
                        r"returned negative scores"),
    "strings for scores": (Fault("body", body=json.dumps({"scores": [["0.2"] * 5] * 12}).encode()),
                           r"holds non-numbers"),
    "no scores": (Fault("body", body=b'{"error": "overloaded"}'), r"the answer has no 'scores'"),
}


@pytest.mark.parametrize("fault, match", REFUSED.values(), ids=REFUSED.keys())
def test_refusals_and_bad_answers_stop_at_once_with_a_clear_error(images, fault, match):
    events: list[dict] = []
    script = Switched(fault)
    with ScriptedServer(TOY, script) as server:
        model = client(server.url, events)
        counted = CountingBackend(model, budget=BUDGET)
        try:
            counted.query(images)
            assert server.received == FIRST_CALL and model.sizer.limit >= 12
            script.start(server.received)
            with pytest.raises(BackendError, match=match) as error:
                counted.query(images)  # one request of 12 images
            np.testing.assert_array_equal(counted.query(images[:3]), TOY.query(images[:3]))  # the backend still works
        finally:
            counted.close()
    assert f"{server.url}/bbvp/v1/predict" in str(error.value)
    assert server.received == FIRST_CALL + 2  # not retried: a second try would get the same answer
    assert counted.images_sent == server.images_answered == 15 <= BUDGET
    assert len(events) == 1 and events[0]["retry"] is False


def test_scores_for_labels_the_model_does_not_have_are_refused(images):
    labels = list(TOY.labels)
    answers = {
        "an unknown label": ([{"label": "tabby", "score": 0.9}], r"label 'tabby' is not one of the 5 known labels"),
        "a label twice": ([{"label": labels[0], "score": 0.5}] * 2, r"appears twice"),
        "a NaN score": ([{"label": labels[0], "score": float("nan")}], r"finite and >= 0"),
    }
    for answer, match in answers.values():
        with ScriptedServer(TOY, always(Fault("body", body=json.dumps(answer).encode()))) as server:
            model = HTTPBackend(f"{server.url}/hf/models/toy", "hf-image-classification", labels=labels,
                                image_size=(8, 8), backoff=0.0)
            counted = CountingBackend(model, budget=BUDGET)
            try:
                with pytest.raises(BackendError, match=rf"hf-image-classification answer from {server.url}.*{match}"):
                    counted.query(images[:1])
            finally:
                counted.close()
        assert server.received == 1 and counted.images_sent == 0


def test_the_reference_servers_fault_injection_recovers_exactly_and_counts_each_failed_attempt(images):
    """Seeded 500/502/503/504/429 on 40% of requests: the same scores, each injected fault one reported attempt."""
    faults = Faults(failure_rate=0.4, failure_codes=(500, 502, 503, 504, 429), retry_after=0, seed=3)
    model_images = np.random.default_rng(1).integers(0, 256, (40, 64, 64, 3), dtype=np.uint8)
    toy = ToyBackend()
    events: list[dict] = []
    with running(create_app(toy, "toy", faults=faults)) as url:
        model = HTTPBackend(url, "oip-v2", max_attempts=12, backoff=0.01, max_backoff=0.05, on_failure=events.append)
        counted = CountingBackend(model, budget=40)
        try:
            scores = np.concatenate([counted.query(model_images[i : i + 4]) for i in range(0, 40, 4)])
            served = httpx.get(f"{url}/stats").json()
        finally:
            counted.close()
    np.testing.assert_allclose(scores, toy.query(model_images), rtol=1e-6)  # FP32 on the wire
    assert served["images"] == counted.images_sent == 40
    assert sum(served["faults"].values()) == len(events) == model.retries > 0
    assert sorted({event["status"] for event in events}) == sorted(int(code) for code in served["faults"])


def _start_reference_server(port: int, latency: float) -> tuple[subprocess.Popen, str]:
    """``serve_command`` for the toy model in a subprocess on 127.0.0.1:``port``; returns it and its URL."""
    code = ("import sys; from backends.http.server import serve_command; "
            "serve_command('toy', port=int(sys.argv[1]), latency=float(sys.argv[2]))")
    process = subprocess.Popen([sys.executable, "-c", code, str(port), str(latency)], stdout=subprocess.PIPE,
                               text=True, env=os.environ | {"PYTHONUNBUFFERED": "1"})
    line = process.stdout.readline()  # "serving 'toy' (...) at http://127.0.0.1:PORT: ..." once listening
    assert " at http://127.0.0.1:" in line, line  # bound to loopback without being told
    return process, line.split(" at ", 1)[1].split(": ", 1)[0]


def test_a_server_killed_mid_request_and_restarted_is_waited_for(images):
    """SIGKILL while a call is in flight, a new server on the same port: the call ends with the clean scores."""
    toy = ToyBackend()
    batch = np.random.default_rng(2).integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    first, url = _start_reference_server(0, latency=0.5)
    second = None
    events: list[dict] = []
    model = HTTPBackend(url, "bbvp", max_attempts=300, backoff=0.05, max_backoff=0.2, timeout=10,
                        on_failure=events.append)
    counted = CountingBackend(model, budget=100)
    try:
        np.testing.assert_array_equal(counted.query(batch[:2]), toy.query(batch[:2]))
        outcome: dict = {}
        worker = threading.Thread(target=lambda: outcome.update(scores=counted.query(batch)), daemon=True)
        worker.start()
        time.sleep(0.25)  # the request is now inside the server's 0.5 s latency
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        time.sleep(0.3)  # down for a while: connections are refused
        second, _ = _start_reference_server(int(url.rsplit(":", 1)[1]), latency=0.0)
        worker.join(timeout=45)
        assert not worker.is_alive(), "the call did not finish within 45 s of the restart"
        np.testing.assert_array_equal(outcome["scores"], toy.query(batch))
        assert httpx.get(f"{url}/stats").json()["images"] == 6  # the new server answered the whole call once
    finally:
        counted.close()
        for process in (first, second):
            if process is not None:
                if process.poll() is None:
                    process.terminate()
                    process.wait(timeout=10)
                process.stdout.close()
    assert counted.images_sent == 8 and len(events) == model.failures >= 2
    assert events[0]["status"] is None and all(event["retry"] for event in events)
    assert events[0]["error"].split(":")[0] in ("RemoteProtocolError", "ReadError")  # killed mid-request
    assert any("ConnectError" in event["error"] for event in events)  # refused while it was down
