"""`bbvp serve`: any local backend over HTTP, in all six wire formats the client speaks, on FastAPI and uvicorn.

Each protocol's endpoints are declared beside its codec, in ``protocols/`` (MODEL is the served name):

- bbvp: ``GET /bbvp/v1/model``, ``POST /bbvp/v1/predict``;
- OIP V2: ``GET /v2``, ``GET /v2/models``, ``POST /v2/repository/index``, ``GET /v2/models/MODEL``,
  ``GET /v2/models/MODEL/ready``, ``POST /v2/models/MODEL/infer`` (BYTES base64 PNG or UINT8 [N, H, W, 3]);
- KServe V1: ``GET /v1/models``, ``GET /v1/models/MODEL``, ``POST /v1/models/MODEL:predict``;
- TorchServe: ``GET /ping``, ``POST /predictions/MODEL`` (raw image bytes; the top 5 labels back);
- Hugging Face: ``POST /hf/models/MODEL`` (raw image bytes, or {"inputs": base64, "parameters": {"top_k"
  or "candidate_labels"}}), for both the image-classification and the zero-shot formats;
- OpenAI chat: ``GET /openai/v1/models``, ``POST /openai/v1/chat/completions`` (the labels as answer tokens).

This module adds what every protocol shares: ``GET /health/live``, ``GET /health/ready`` (and OIP's
``/v2/health/...``), ``GET /stats`` (inference requests and images served, scored and answered whether or
not the client still waited, faults injected, requests refused) and ``GET /metrics`` (Prometheus).

Limits guard the server: body size, images per request, pixels per image (checked from the image
header before decoding, against decompression bombs). Fault injection (:class:`Faults`) answers some
inference requests with chosen errors, 429 with Retry-After, added latency (per request and per image)
or truncated bodies, from a seeded generator, for tests and demos. Errors are JSON ``{"error":
message}``: 4xx for a request the server refuses (never a traceback), 500 with a fixed message when the
model itself fails (the traceback goes to the server's log). Requests never name files: images travel
in the body only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import socket
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from backends.base import Backend, BackendError, BackendWrapper
from backends.errors import ConfigurationError
from backends.http.client import LOOPBACK_HOSTS
from backends.http.protocols import ROUTES
from backends.http.serving import Body, RequestError, Route, ServedModel

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
log = logging.getLogger(__name__)


@dataclass
class Limits:
    """What one request may carry. ``max_batch`` None: the backend's ``max_batch``."""

    max_body_bytes: int = 64 * 2**20
    max_batch: int | None = None
    max_pixels: int = 4096 * 4096

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1 or self.max_pixels < 1 or (self.max_batch is not None and self.max_batch < 1):
            raise ConfigurationError("max_body_bytes, max_pixels and max_batch must be positive")


@dataclass
class Faults:
    """Faults injected into inference requests (never into health, metadata or stats).

    Every ``rate_limit_every``-th inference request is answered 429 with ``Retry-After: retry_after``;
    of the others, a ``failure_rate`` share is answered with one of ``failure_codes``, and a
    ``truncate_rate`` share gets its JSON body cut in half; ``latency`` seconds are added to each, and
    ``latency_per_image`` seconds per image once the images are scored (so the answer comes late, as from
    a slow model; requests wait alongside one another, not in turn). Draws come from a generator seeded
    with ``seed``, so a sequence of requests meets the same faults.
    """

    latency: float = 0.0
    latency_per_image: float = 0.0
    failure_rate: float = 0.0
    failure_codes: tuple[int, ...] = (503,)
    rate_limit_every: int = 0
    retry_after: int = 1
    truncate_rate: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("failure_rate", "truncate_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigurationError(f"{name} must be between 0 and 1, got {getattr(self, name)}")
        if self.latency < 0 or self.latency_per_image < 0 or self.rate_limit_every < 0 or self.retry_after < 0:
            raise ConfigurationError("latency, latency_per_image, rate_limit_every and retry_after must be >= 0")
        if not self.failure_codes or not all(400 <= code <= 599 for code in self.failure_codes):
            raise ConfigurationError(f"failure_codes must be HTTP error statuses (400-599), got {self.failure_codes}")


class _State:
    """The served model, the limits, the fault generator and the counters (shared by all requests)."""

    def __init__(self, backend: Backend, name: str, limits: Limits, faults: Faults):
        self.backend = backend
        self.limits = limits
        self.model = ServedModel(backend, name, limits.max_batch or backend.max_batch, limits.max_pixels)
        self.faults = faults
        self.random = random.Random(faults.seed)
        self.inference_requests = 0
        self.requests = 0
        self.images = 0
        self.injected: Counter[str] = Counter()
        self.refused = 0
        self.upstream_failures = 0  # requests whose model, itself a remote backend, failed (502 or 503)
        self.lock = threading.Lock()  # counters, held briefly (also on the event loop)

    def draw_fault(self) -> tuple[int | None, bool]:
        """(error status to answer instead, or None; whether to truncate the answer), in arrival order."""
        with self.lock:
            self.inference_requests += 1
            fail, truncate = self.random.random(), self.random.random()
            code = self.random.choice(self.faults.failure_codes)
            every = self.faults.rate_limit_every
            if every and self.inference_requests % every == 0:
                status = 429
            elif fail < self.faults.failure_rate:
                status = code
            else:
                status = None
            if status is not None:
                self.injected[str(status)] += 1
            return status, truncate < self.faults.truncate_rate

    def served(self, images: int) -> None:
        with self.lock:
            self.requests += 1
            self.images += images

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {"model": self.model.name, "requests": self.requests, "images": self.images,
                    "inference_requests": self.inference_requests, "faults": dict(self.injected),
                    "refused": self.refused, "upstream_failures": self.upstream_failures}

    async def read_body(self, request: Request) -> Body:
        """The request's body, refused (413) past the body limit before it is all read."""
        limit = self.limits.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise RequestError(413, f"request body of {declared} bytes is over this server's limit of {limit}")
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise RequestError(413, f"request body is over this server's limit of {limit} bytes")
            chunks.append(chunk)
        return Body(b"".join(chunks), request.headers.get("content-type", ""))

    async def infer(self, request: Request, handle: Callable[[ServedModel, Body], tuple[Any, int]]) -> Response:
        """Read the body within the limit, inject faults, run ``handle`` off the event loop, count the images."""
        body = await self.read_body(request)
        status, truncate = self.draw_fault()
        if status is not None:
            headers = {"Retry-After": str(self.faults.retry_after)} if status == 429 else None
            message = "rate limited (injected)" if status == 429 else f"injected fault {status}"
            return JSONResponse({"error": message}, status_code=status, headers=headers)
        if self.faults.latency:
            await asyncio.sleep(self.faults.latency)
        payload, images = await run_in_threadpool(handle, self.model, body)
        if self.faults.latency_per_image:
            await asyncio.sleep(self.faults.latency_per_image * images)
        content = json.dumps(payload, allow_nan=False, separators=(",", ":")).encode()
        if truncate:
            with self.lock:
                self.injected["truncated"] += 1
            return Response(content[: len(content) // 2], media_type="application/json")
        self.served(images)
        return Response(content, media_type="application/json")


def create_app(backend: Backend, name: str = "model", limits: Limits | None = None,
               faults: Faults | None = None) -> FastAPI:
    """The FastAPI app serving ``backend`` as model ``name`` in every protocol of ``protocols/`` (see the module
    docstring for the endpoints)."""
    if not MODEL_NAME.match(name):
        raise ConfigurationError(f"model name {name!r} must be letters, digits, '.', '_' or '-'")
    state = _State(backend, name, limits or Limits(), faults or Faults())
    app = FastAPI(title="blackbox-vp model server", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.bbvp = state
    _add_error_handlers(app, state)
    _add_health_and_counters(app, state)
    for route in ROUTES:
        app.add_api_route(route.path, _endpoint(state, route), methods=[route.method])
    return app


def _endpoint(state: _State, route: Route) -> Callable[[Request], Awaitable[Any]]:
    """The FastAPI endpoint of one protocol route: the model name checked, then the handler."""
    async def endpoint(request: Request) -> Any:
        if "model" in request.path_params:
            state.model.check_name(request.path_params["model"])
        if route.infers:
            return await state.infer(request, route.handle)
        return route.handle(state.model)

    endpoint.__name__ = route.handle.__name__
    return endpoint


def _add_error_handlers(app: FastAPI, state: _State) -> None:
    @app.exception_handler(RequestError)
    async def request_error(request: Request, error: RequestError) -> JSONResponse:
        with state.lock:
            state.refused += 1
        return JSONResponse({"error": error.message}, status_code=error.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        """Unknown paths (404) and methods (405), in the same {"error": ...} shape as every other error."""
        return JSONResponse({"error": f"{error.detail}: {request.method} {request.url.path}"},
                            status_code=error.status_code, headers=getattr(error, "headers", None))

    @app.exception_handler(BackendError)
    async def upstream_error(request: Request, error: BackendError) -> JSONResponse:
        """The model is itself a remote backend (``bbvp serve --prompt`` in front of a URL) and it failed: 503
        where the upstream was unavailable or rate limited (retrying later may work), else 502, with its reason."""
        with state.lock:
            state.upstream_failures += 1
        status = 503 if error.status in (429, 503) else 502
        return JSONResponse({"error": f"the upstream model failed: {error}"}, status_code=status)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        """A fault of the server or its model: logged here with its traceback, answered without it."""
        log.error("%s %s failed", request.method, request.url.path, exc_info=error)
        return JSONResponse({"error": "internal error in the model server; its log has the details"},
                            status_code=500)


def _add_health_and_counters(app: FastAPI, state: _State) -> None:
    @app.get("/health/live")
    @app.get("/v2/health/live")
    async def live() -> dict:
        return {"live": True}

    @app.get("/health/ready")
    @app.get("/v2/health/ready")
    async def ready() -> dict:
        return {"ready": True}

    @app.get("/stats")
    async def stats() -> dict:
        return state.stats()

    @app.get("/metrics")
    async def metrics() -> Response:
        """The counters in Prometheus' text format, with the upstream's where the model is a remote backend."""
        counted = state.stats()
        lines = [metric("bbvp_requests_total", "inference requests answered", counted["requests"]),
                 metric("bbvp_images_total", "images scored", counted["images"]),
                 metric("bbvp_refused_total", "requests refused (bad input, limits)", counted["refused"]),
                 metric("bbvp_upstream_failures_total", "requests whose upstream model failed",
                        counted["upstream_failures"])]
        backend = state.backend
        sent = (backend.unwrap() if isinstance(backend, BackendWrapper) else backend).stats()
        if sent is not None:  # a remote model upstream
            lines += [metric("bbvp_upstream_requests_total", "HTTP requests sent upstream", sent["requests"]),
                      metric("bbvp_upstream_images_total", "images answered upstream", sent["images"]),
                      metric("bbvp_upstream_retries_total", "retried upstream requests", sent["retries"]),
                      metric("bbvp_upstream_cost_total", "cost of the images answered upstream", sent["cost"])]
        return Response("".join(lines), media_type="text/plain; version=0.0.4")


def metric(name: str, help: str, value: float) -> str:
    """One counter in Prometheus' text exposition format."""
    return f"# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one); connections queue until uvicorn serves."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets that say
    # they are TCP; with it on, each answer (headers, then body) waited ~40 ms for the client's delayed ACK
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as error:
        sock.close()
        raise ConfigurationError(f"cannot listen on {host}:{port}: {error}") from error
    return sock


def serve(backend: Backend, host: str = "127.0.0.1", port: int = 8000, *, name: str = "model",
          limits: Limits | None = None, faults: Faults | None = None, log_level: str = "warning") -> None:
    """Serve ``backend`` until interrupted; prints the URL (with the real port when ``port`` is 0)."""
    import uvicorn

    app = create_app(backend, name, limits, faults)
    sock = bind(host, port)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{sock.getsockname()[1]}"
    print(f"serving {name!r} ({len(backend.labels)} labels, {backend.image_size[1]}x{backend.image_size[0]}) at {url}: "
          f"bbvp {url}, oip-v2 {url}/v2/models/{name}, kserve-v1 {url}/v1/models/{name}, torchserve "
          f"{url}/predictions/{name}, hf {url}/hf/models/{name}, openai-chat {url}/openai", flush=True)
    if host not in LOOPBACK_HOSTS:
        print(f"note: {host} is reachable from other machines, and this server has no authentication", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="off")).run(sockets=[sock])


def serve_command(backend: str = "reference", host: str = "127.0.0.1", port: int = 8000, *, name: str | None = None,
                  wrap: Callable[[Backend], Backend] | None = None, device: str = "cpu", max_body_mb: float = 64.0,
                  max_batch: int | None = None,
                  max_pixels: int = 4096 * 4096, latency: float = 0.0, latency_per_image: float = 0.0,
                  failure_rate: float = 0.0, failure_codes: str = "503", rate_limit_every: int = 0,
                  retry_after: int = 1, truncate_rate: float = 0.0, fault_seed: int = 0, **http_options: Any) -> int:
    """`bbvp serve`: build the backend ``backend`` (a name, or a URL with ``http_options``) and serve it, or
    ``wrap(backend)`` (``bbvp serve --prompt`` wraps it in the adapted classifier); ``failure_codes`` is
    "503,500"."""
    from backends import make_backend

    try:
        codes = tuple(int(code) for code in failure_codes.split(","))
    except ValueError as error:
        raise ConfigurationError(f"--failure-codes must be comma-separated HTTP statuses, got {failure_codes!r}") from error
    limits = Limits(max_body_bytes=int(max_body_mb * 2**20), max_batch=max_batch, max_pixels=max_pixels)
    faults = Faults(latency=latency, latency_per_image=latency_per_image, failure_rate=failure_rate,
                    failure_codes=codes, rate_limit_every=rate_limit_every, retry_after=retry_after,
                    truncate_rate=truncate_rate, seed=fault_seed)
    model = make_backend(backend, device=device, **http_options)
    if wrap is not None:
        model = wrap(model)
    default_name = backend if MODEL_NAME.match(backend) else "model"
    try:
        serve(model, host, port, name=name or default_name, limits=limits, faults=faults)
    finally:
        model.close()
    return 0
