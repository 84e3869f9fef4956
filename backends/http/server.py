"""`bbvp serve`: any local backend over HTTP, in this project's protocol, Open Inference Protocol V2
and the Hugging Face shape, on FastAPI and uvicorn.

Endpoints (MODEL is the served name):

- ``GET /health/live``, ``GET /health/ready`` (and OIP's ``/v2/health/live``, ``/v2/health/ready``);
- ``GET /stats``: inference requests and images served (scored and answered, whether or not the client
  still waited for the answer), faults injected, requests refused;
- bbvp: ``GET /bbvp/v1/model``, ``POST /bbvp/v1/predict``;
- OIP V2: ``GET /v2``, ``GET /v2/models``, ``POST /v2/repository/index``, ``GET /v2/models/MODEL``,
  ``GET /v2/models/MODEL/ready``, ``POST /v2/models/MODEL/infer`` (BYTES base64 PNG or UINT8 [N, H, W, 3]);
- Hugging Face: ``POST /hf/models/MODEL`` (raw image bytes, or {"inputs": base64, "parameters": {"top_k"
  or "candidate_labels"}}).

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
import base64
import io
import json
import logging
import random
import re
import socket
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from backends.base import Backend, BackendError, BackendWrapper, pixel_size
from backends.errors import ConfigurationError

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP")
HF_DEFAULT_TOP_K = 5
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
LOOPBACK = ("127.0.0.1", "::1", "localhost")
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


class RequestError(Exception):
    """Answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class _State:
    """The served backend, its limits, fault generator and counters (shared by all requests)."""

    def __init__(self, backend: Backend, name: str, limits: Limits, faults: Faults):
        self.backend = backend
        self.name = name
        self.limits = limits
        self.max_batch = limits.max_batch or backend.max_batch
        self.faults = faults
        self.random = random.Random(faults.seed)
        self.inference_requests = 0
        self.requests = 0
        self.images = 0
        self.injected: Counter[str] = Counter()
        self.refused = 0
        self.upstream_failures = 0  # requests whose model, itself a remote backend, failed (502 or 503)
        self.lock = threading.Lock()  # counters, held briefly (also on the event loop)
        self.model_lock = threading.Lock()  # one backend query at a time, in the threadpool

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

    def check_count(self, count: int) -> None:
        if count == 0:
            raise RequestError(400, "the request holds no images")
        if count > self.max_batch:
            raise RequestError(413, f"{count} images in one request; this server takes at most {self.max_batch} "
                                    "(its metadata says max_batch)")

    def score(self, images: np.ndarray) -> np.ndarray:
        with self.model_lock:
            return self.backend.query(images)

    def served(self, images: int) -> None:
        with self.lock:
            self.requests += 1
            self.images += images

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {"model": self.name, "requests": self.requests, "images": self.images,
                    "inference_requests": self.inference_requests, "faults": dict(self.injected),
                    "refused": self.refused, "upstream_failures": self.upstream_failures}


def decode_image(data: bytes, index: int, size: tuple[int, int], max_pixels: int) -> np.ndarray:
    """One (H, W, 3) uint8 image from PNG/JPEG/WebP/BMP bytes; its size checked from the header first."""
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise RequestError(413, f"image {index} is {width}x{height} pixels, over this server's limit "
                                        f"of {max_pixels} pixels")
            if (height, width) != tuple(size):
                raise RequestError(400, f"image {index} is {width}x{height} (WxH); the model takes "
                                        f"{size[1]}x{size[0]}")
            return np.asarray(image.convert("RGB"))
    except Image.DecompressionBombError as error:
        raise RequestError(413, f"image {index}: {error}") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise RequestError(400, f"image {index} is not a readable {'/'.join(IMAGE_FORMATS)} image: {error}") from error


def _base64(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise RequestError(400, f"{where} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError as error:  # binascii.Error, or a non-ASCII string
        raise RequestError(400, f"{where} is not valid base64: {error}") from error


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as error:
        raise RequestError(400, f"the request body is not valid JSON: {error}") from error
    except RecursionError:
        raise RequestError(400, "the request body is JSON nested too deeply") from None


def _uint8_tensor(tensor: dict, size: tuple[int, int], max_pixels: int) -> np.ndarray:
    """Images from an OIP UINT8 tensor of shape [N, H, W, 3] (data flat row-major or nested)."""
    shape = tensor.get("shape")
    if not (isinstance(shape, list) and len(shape) == 4 and shape[3] == 3
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise RequestError(400, f"a UINT8 input must have shape [N, H, W, 3], got {shape}")
    if shape[1] * shape[2] > max_pixels:
        raise RequestError(413, f"images of {shape[2]}x{shape[1]} pixels are over this server's limit of {max_pixels}")
    if (shape[1], shape[2]) != tuple(size):
        raise RequestError(400, f"images are {shape[2]}x{shape[1]} (WxH); the model takes {size[1]}x{size[0]}")
    try:
        data = np.asarray(tensor.get("data"))
    except ValueError as error:
        raise RequestError(400, f"UINT8 data is not a rectangular array: {error}") from error
    valid = data.dtype.kind in "iu" and data.size == int(np.prod(shape))
    if not valid or (data.size and (data.min() < 0 or data.max() > 255)):
        raise RequestError(400, f"UINT8 data must be {int(np.prod(shape))} integers in 0..255")
    return data.astype(np.uint8).reshape(shape)


def create_app(backend: Backend, name: str = "model", limits: Limits | None = None,
               faults: Faults | None = None) -> FastAPI:
    """The FastAPI app serving ``backend`` as model ``name`` (see the module docstring for the endpoints)."""
    if not MODEL_NAME.match(name):
        raise ConfigurationError(f"model name {name!r} must be letters, digits, '.', '_' or '-'")
    state = _State(backend, name, limits or Limits(), faults or Faults())
    size = pixel_size(backend.image_size)
    app = FastAPI(title="blackbox-vp model server", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.bbvp = state

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

    def check_model(model: str) -> None:
        if model != name:
            raise RequestError(404, f"model {model!r} not found; this server serves {name!r}")

    async def infer(request: Request, work: Any) -> Response:
        """Read the body within the limit, inject faults, run ``work(body) -> (payload, images)`` off the loop."""
        body = await read_body(request)
        status, truncate = state.draw_fault()
        if status is not None:
            headers = {"Retry-After": str(state.faults.retry_after)} if status == 429 else None
            message = "rate limited (injected)" if status == 429 else f"injected fault {status}"
            return JSONResponse({"error": message}, status_code=status, headers=headers)
        if state.faults.latency:
            await asyncio.sleep(state.faults.latency)
        payload, images = await run_in_threadpool(work, body, request.headers.get("content-type", ""))
        if state.faults.latency_per_image:
            await asyncio.sleep(state.faults.latency_per_image * images)
        content = json.dumps(payload, allow_nan=False, separators=(",", ":")).encode()
        if truncate:
            with state.lock:
                state.injected["truncated"] += 1
            return Response(content[: len(content) // 2], media_type="application/json")
        state.served(images)
        return Response(content, media_type="application/json")

    async def read_body(request: Request) -> bytes:
        limit = state.limits.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise RequestError(413, f"request body of {declared} bytes is over this server's limit of {limit}")
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise RequestError(413, f"request body is over this server's limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def decode_all(blobs: list[bytes]) -> np.ndarray:
        state.check_count(len(blobs))
        return np.stack([decode_image(blob, i, size, state.limits.max_pixels) for i, blob in enumerate(blobs)])

    # --- health and counters ---

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
        sent = (backend.unwrap() if isinstance(backend, BackendWrapper) else backend).stats()
        if sent is not None:  # a remote model upstream
            lines += [metric("bbvp_upstream_requests_total", "HTTP requests sent upstream", sent["requests"]),
                      metric("bbvp_upstream_images_total", "images answered upstream", sent["images"]),
                      metric("bbvp_upstream_retries_total", "retried upstream requests", sent["retries"]),
                      metric("bbvp_upstream_cost_total", "cost of the images answered upstream", sent["cost"])]
        return Response("".join(lines), media_type="text/plain; version=0.0.4")

    # --- bbvp ---

    @app.get("/bbvp/v1/model")
    async def bbvp_model() -> dict:
        return {"name": name, "labels": list(backend.labels), "image_size": list(size), "max_batch": state.max_batch}

    def bbvp_work(body: bytes, content_type: str) -> tuple[dict, int]:
        request = _json(body)
        images = request.get("images") if isinstance(request, dict) else None
        if not isinstance(images, list):
            raise RequestError(400, 'expected {"images": [base64 PNG, ...]}')
        pixels = decode_all([_base64(image, f"images[{i}]") for i, image in enumerate(images)])
        return {"scores": state.score(pixels).tolist()}, len(pixels)

    @app.post("/bbvp/v1/predict")
    async def bbvp_predict(request: Request) -> Response:
        return await infer(request, bbvp_work)

    # --- Open Inference Protocol V2 ---

    @app.get("/v2")
    async def server_metadata() -> dict:
        return {"name": "blackbox-vp", "version": "0.1.0", "extensions": ["model_repository"]}

    @app.get("/v2/models")
    async def model_list() -> dict:
        return {"models": [name]}

    @app.post("/v2/repository/index")
    async def repository_index() -> list:
        return [{"name": name, "version": "1", "state": "READY", "reason": ""}]

    @app.get("/v2/models/{model}")
    async def model_metadata(model: str) -> dict:
        check_model(model)
        return {"name": name, "versions": ["1"], "platform": "blackbox-vp",
                "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
                "outputs": [{"name": "scores", "datatype": "FP32", "shape": [-1, len(backend.labels)]}],
                "parameters": {"labels": list(backend.labels), "image_size": list(size), "max_batch": state.max_batch}}

    @app.get("/v2/models/{model}/ready")
    async def model_ready(model: str) -> dict:
        check_model(model)
        return {"name": name, "ready": True}

    def oip_work(body: bytes, content_type: str) -> tuple[dict, int]:
        request = _json(body)
        inputs = request.get("inputs") if isinstance(request, dict) else None
        if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
            raise RequestError(400, "expected one input tensor in 'inputs'")
        tensor = inputs[0]
        if tensor.get("datatype") == "BYTES":
            data = tensor.get("data")
            if not isinstance(data, list) or tensor.get("shape") != [len(data)]:
                raise RequestError(400, "a BYTES input needs shape [N] and N base64 strings in 'data'")
            pixels = decode_all([_base64(item, f"data[{i}]") for i, item in enumerate(data)])
        elif tensor.get("datatype") == "UINT8":
            pixels = _uint8_tensor(tensor, size, state.limits.max_pixels)
            state.check_count(len(pixels))
        else:
            raise RequestError(400, f"input datatype {tensor.get('datatype')!r} not supported; send BYTES or UINT8")
        scores = state.score(pixels).astype(np.float32)
        output = {"name": "scores", "datatype": "FP32", "shape": list(scores.shape), "data": scores.ravel().tolist()}
        answer = {"model_name": name, "model_version": "1", "outputs": [output]}
        if isinstance(request.get("id"), str):
            answer["id"] = request["id"]
        return answer, len(pixels)

    @app.post("/v2/models/{model}/infer")
    async def oip_infer(model: str, request: Request) -> Response:
        check_model(model)
        return await infer(request, oip_work)

    # --- Hugging Face ---

    def hf_work(body: bytes, content_type: str) -> tuple[list, int]:
        parameters: dict = {}
        if content_type.startswith("application/json"):
            request = _json(body)
            if not isinstance(request, dict):
                raise RequestError(400, 'expected {"inputs": base64 image, "parameters": {...}}')
            blob = _base64(request.get("inputs"), "inputs")
            parameters = request.get("parameters") or {}
            if not isinstance(parameters, dict):
                raise RequestError(400, "'parameters' must be an object")
        else:
            blob = body
        scores = state.score(decode_all([blob]))[0]
        candidates = parameters.get("candidate_labels")
        if candidates is not None:
            if not isinstance(candidates, list) or not candidates or not all(c in backend.labels for c in candidates):
                raise RequestError(400, "candidate_labels must be a non-empty list of this model's labels")
            picked = np.array([scores[list(backend.labels).index(c)] for c in candidates])
            ranked = sorted(zip(candidates, picked / picked.sum()), key=lambda pair: -pair[1])
        else:
            top_k = parameters.get("top_k", HF_DEFAULT_TOP_K)
            if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
                raise RequestError(400, f"top_k must be a positive integer, got {top_k!r}")
            order = np.argsort(-scores, kind="stable")[:top_k]
            ranked = [(backend.labels[i], scores[i]) for i in order]
        return [{"label": label, "score": float(score)} for label, score in ranked], 1

    @app.post("/hf/models/{model}")
    async def hf_predict(model: str, request: Request) -> Response:
        check_model(model)
        return await infer(request, hf_work)

    return app


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
          f"bbvp {url}/bbvp/v1/predict, oip-v2 {url}/v2/models/{name}/infer, hf {url}/hf/models/{name}", flush=True)
    if host not in LOOPBACK:
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
