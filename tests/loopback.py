"""Loopback servers for the fault tests: uvicorn in a thread, and a scripted raw-socket bbvp server.

The scripted server speaks just enough HTTP/1.1 (keep-alive, Content-Length bodies) to serve the
bbvp protocol for a toy model, and answers each inference request as its script says: scores, an
error status, a reset connection, a stall, a body cut short or any bytes at all. It binds 127.0.0.1
only. Counters say what it received and what it answered in full.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pytest
import uvicorn
from PIL import Image

from backends.base import Backend
from backends.http.server import bind


def free_ports(count: int = 1) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (for a server the test starts in another process)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def stop(process) -> None:
    """End a server the test started (a ``subprocess.Popen``): SIGTERM, then SIGKILL after 15 s."""
    import subprocess

    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def server_run_config():
    """The run that every real-server test makes against its server and against the local toy model."""
    from blackbox_vp import RunConfig

    return RunConfig(backend="toy", optimizer="cma", mapping="frequency", data="digits", budget=1500, batch_size=8,
                     grid=4, val=60, test=120, train=400, quiet=True)


@contextmanager
def running(app, port: int = 0, **config) -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1:``port`` (0: a free one) in a thread; yields its URL.

    ``config`` goes to ``uvicorn.Config`` (e.g. ``ssl_keyfile``, ``ssl_certfile``: the URL is then https).
    """
    sock = bind("127.0.0.1", port)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.01)
        assert server.started, "uvicorn did not start within 10 s"
        scheme = "https" if config.get("ssl_certfile") else "http"
        yield f"{scheme}://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@dataclass(frozen=True)
class Fault:
    """One way to answer an inference request. ``kind``:

    - ``status``: answer ``status`` with ``body`` and ``headers`` (e.g. 429 with Retry-After);
    - ``reset``: read the request, then reset the connection (RST, no answer);
    - ``close``: read the request, then close the connection cleanly without answering;
    - ``stall``: wait ``seconds`` (longer than the client's timeout), then answer normally;
    - ``cut``: answer 200 with the right Content-Length but send only half the body, then close;
    - ``body``: answer 200 with ``body`` as is (invalid JSON, wrong shapes, NaN, other labels...).
    """

    kind: str
    status: int = 200
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    seconds: float = 0.0


OK = Fault("ok")
Script = Callable[[int], Fault]
"""The fault for the n-th inference request (n from 0); ``OK`` to answer normally."""


def sequence(*faults: Fault) -> Script:
    """The script that answers with ``faults`` in turn, then normally."""
    return lambda n: faults[n] if n < len(faults) else OK


def always(fault: Fault) -> Script:
    return lambda n: fault


class Switched:
    """The script that answers normally until :meth:`start`, then with ``faults`` in turn, then normally."""

    def __init__(self, *faults: Fault):
        self.faults = faults
        self.first: int | None = None

    def start(self, n: int) -> None:
        """Answer the ``n``-th inference request (from 0) and those after it with the faults."""
        self.first = n

    def __call__(self, n: int) -> Fault:
        k = -1 if self.first is None else n - self.first
        return self.faults[k] if 0 <= k < len(self.faults) else OK


REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           408: "Request Timeout", 413: "Content Too Large", 429: "Too Many Requests", 500: "Internal Server Error",
           502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


class ScriptedServer:
    """A bbvp server for ``model`` on 127.0.0.1 that answers inference requests as ``script`` says.

    ``GET /bbvp/v1/model`` is always answered. Any POST is an inference request: a bbvp body is
    scored when the script says OK; the answer to any other path (``/hf/...``) comes from the script
    alone. Counters: ``received`` (inference requests), ``images_received``, ``images_answered``
    (images in answers sent in full with scores), ``faults`` (requests answered with a fault).
    """

    def __init__(self, model: Backend, script: Script | None = None):
        self.model = model
        self.script = script if script is not None else sequence()
        self.lock = threading.Lock()
        self.received = 0
        self.images_received = 0
        self.images_answered = 0
        self.faults = 0
        self.log: list[str] = []  # the fault kind (or "ok") of each inference request, in arrival order
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer._serve_connection(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # --- HTTP ---

    def _serve_connection(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        try:
            while True:
                request = _read_request(reader)
                if request is None:
                    return
                method, path, body = request
                if not self._answer(conn, method, path, body):
                    return
        except OSError:
            return
        finally:
            reader.close()

    def _answer(self, conn: socket.socket, method: str, path: str, body: bytes) -> bool:
        """Answer one request; False when the connection is to be dropped."""
        if method == "GET" and path == "/bbvp/v1/model":
            meta = {"name": "toy", "labels": list(self.model.labels), "image_size": list(self.model.image_size),
                    "max_batch": 64}
            _send(conn, 200, json.dumps(meta).encode())
            return True
        images = _bbvp_images(body) if path == "/bbvp/v1/predict" else None
        with self.lock:
            number = self.received
            self.received += 1
            self.images_received += 0 if images is None else len(images)
        fault = self.script(number)
        with self.lock:
            self.log.append(fault.kind)
            self.faults += fault.kind != "ok"
        if fault.kind == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            return False
        if fault.kind == "close":
            conn.shutdown(socket.SHUT_RDWR)
            return False
        if fault.kind == "status":
            _send(conn, fault.status, fault.body, dict(fault.headers))
            return True
        if fault.kind == "body":
            _send(conn, 200, fault.body)
            return True
        if fault.kind == "stall":
            time.sleep(fault.seconds)
        answer = json.dumps({"scores": self.model.query(images).tolist()}).encode()
        if fault.kind == "cut":
            head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(answer)}\r\n\r\n"
            conn.sendall(head.encode() + answer[: len(answer) // 2])
            conn.shutdown(socket.SHUT_RDWR)
            return False
        _send(conn, 200, answer)
        if fault.kind == "ok":
            with self.lock:
                self.images_answered += len(images)
        return True


def _read_request(reader) -> tuple[str, str, bytes] | None:
    line = reader.readline()
    if not line:
        return None
    method, path, _ = line.decode("latin-1").split(" ", 2)
    length = 0
    while True:
        header = reader.readline()
        if header in (b"\r\n", b"\n", b""):
            break
        name, _, value = header.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    return method, path, reader.read(length)


def _send(conn: socket.socket, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}", "Content-Type: application/json",
             f"Content-Length: {len(body)}"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
    conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)


def _bbvp_images(body: bytes) -> np.ndarray:
    def decode(text: str) -> np.ndarray:
        with Image.open(io.BytesIO(base64.b64decode(text))) as image:
            return np.asarray(image.convert("RGB"))

    return np.stack([decode(text) for text in json.loads(body)["images"]])


def assert_same_run(result, expected) -> None:
    """A run whose scores took another path (a server's float32, logits softmaxed by the client) equals the local
    one: every step, image count and validation accuracy, and the test accuracy, exactly; the losses to 1e-12,
    since exp and log round their last bit differently on some CPUs."""
    assert [{**h, "loss": pytest.approx(h["loss"], rel=1e-12) if h.get("loss") is not None else h.get("loss")}
            for h in expected.history] == result.history
    assert result.test_accuracy == expected.test_accuracy
