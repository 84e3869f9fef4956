"""Soak: a query loop whose every step depends on the scores before it, against a loopback server that
fails 20% of requests in every retryable way; it ends exactly where the clean loop ends.

Bounded: ``BBVP_SOAK_SECONDS`` (default 15) of faulty loop, at most ``STEP_LIMIT`` steps, and each
call at most ``ATTEMPTS`` tries. ``BBVP_SOAK_SECONDS=600 pytest tests/test_http_soak.py`` is the
10-minute soak of issue 8.
"""

import os
import time

import numpy as np
import pytest
from loopback import OK, Fault, ScriptedServer

from backends import BudgetExhausted, CountingBackend
from backends.http import HTTPBackend
from backends.toy import ToyBackend

TOY = ToyBackend(num_labels=5, image_size=(8, 8))
SECONDS = float(os.environ.get("BBVP_SOAK_SECONDS", "15"))
STEP_LIMIT = 100_000
CANDIDATES = 8
ATTEMPTS = 10
FAILURE_RATE = 0.2
TIMEOUT = 0.3
FAULTS = [Fault("status", status=code, body=b'{"error": "injected"}') for code in (500, 502, 503, 504)] + [
    Fault("status", status=429, headers=(("Retry-After", "0"),)), Fault("reset"), Fault("close"), Fault("cut"),
    Fault("stall", seconds=TIMEOUT + 0.2)]


def faulty_script(seed: int):
    """The fault for request n: 20% of requests, drawn from ``FAULTS`` by a seeded generator."""
    rng = np.random.default_rng(seed)
    draws = rng.random(STEP_LIMIT * 2)
    kinds = rng.integers(0, len(FAULTS), STEP_LIMIT * 2)
    return lambda n: FAULTS[kinds[n]] if draws[n] < FAILURE_RATE else OK


def climb(backend, seconds: float | None, steps: int | None, seed: int = 0) -> tuple[int, np.ndarray, list]:
    """Hill-climb the score of label 0 from a seeded start: each step sends CANDIDATES images and keeps the
    best, so one wrong score changes every step after it. Runs ``steps`` steps, or for ``seconds``."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (8, 8, 3))
    trace, started, step = [], time.monotonic(), 0
    while (step < steps) if steps is not None else (time.monotonic() - started < seconds and step < STEP_LIMIT):
        candidates = np.clip(x + rng.integers(-24, 25, (CANDIDATES, 8, 8, 3)), 0, 255).astype(np.uint8)
        scores = backend.query(candidates)
        x = candidates[int(np.argmax(scores[:, 0]))].astype(np.int64)
        trace.append(scores)
        step += 1
    return step, x, trace


@pytest.mark.slow
def test_a_soak_through_20_percent_failures_ends_exactly_as_the_clean_run():
    events: list[dict] = []
    with ScriptedServer(TOY, faulty_script(seed=8)) as server:
        model = HTTPBackend(server.url, "bbvp", max_attempts=ATTEMPTS, backoff=0.01, max_backoff=0.05,
                            timeout=TIMEOUT, on_failure=events.append)
        try:
            started = time.monotonic()
            steps, x, trace = climb(model, seconds=SECONDS, steps=None)
            elapsed = time.monotonic() - started
            budget = CountingBackend(model, budget=CANDIDATES)
            budget.query(np.zeros((CANDIDATES, 8, 8, 3), np.uint8))
            with pytest.raises(BudgetExhausted):
                budget.query(np.zeros((1, 8, 8, 3), np.uint8))
        finally:
            model.close()
    with ScriptedServer(TOY) as clean_server:
        clean = HTTPBackend(clean_server.url, "bbvp")
        try:
            _, clean_x, clean_trace = climb(clean, seconds=None, steps=steps)
        finally:
            clean.close()
    _, local_x, _ = climb(TOY, seconds=None, steps=steps)
    np.testing.assert_array_equal(x, clean_x)  # the same end point...
    np.testing.assert_array_equal(np.stack(trace), np.stack(clean_trace))  # ...through the same scores
    np.testing.assert_array_equal(x, local_x)
    # Bounded in time and requests; every failed attempt reported, none given up. On a loaded machine a
    # normal answer can also miss the client's timeout ("late"): retried like a stall, and counted apart.
    # A call is one request or, while a timeout has halved the images per request, a few.
    assert steps >= 50 and elapsed < SECONDS + ATTEMPTS * (TIMEOUT + 0.5)
    calls = steps + 1
    answered = model.requests - 1 - model.retries  # inference requests answered (the metadata request aside)
    assert calls <= answered <= 2 * calls
    late = model.retries - server.faults
    assert 0 <= late <= 0.01 * answered
    assert answered + server.faults <= server.received <= answered + model.retries <= answered * ATTEMPTS
    assert 0.12 < server.faults / server.received < 0.28
    assert len(events) == model.retries and all(event["retry"] for event in events)
    timeouts = [event for event in events if event["status"] is None and "Timeout" in event["error"]]
    assert len(timeouts) >= server.log.count("stall") + late
    # Images count as timed out only after the request went out: a connect or pool timeout (a loaded
    # machine) sent nothing.
    sent = [event for event in timeouts if event["error"].startswith(("ReadTimeout", "WriteTimeout"))]
    assert model.images_timed_out == sum(event["images"] for event in sent) > 0
    assert model.images_answered == calls * CANDIDATES
    assert calls * CANDIDATES <= server.images_answered <= (server.received - server.faults) * CANDIDATES
    assert {kind for kind in server.log} == {"ok"} | {fault.kind for fault in FAULTS}
