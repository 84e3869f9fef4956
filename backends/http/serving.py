"""The server's half of a wire format, without the web framework.

Each protocol module (``protocols/``) lists its endpoints as :class:`Route`\\ s beside its client codec;
``server.py`` mounts every protocol's routes on one FastAPI app, reads bodies within the limits, injects
faults and counts. A handler does no I/O: it gets the :class:`ServedModel` (and, on an inference route,
the request :class:`Body`), turns the body into images, scores them with :meth:`ServedModel.score` and
turns the scores into the protocol's answer; anything the protocol does not allow raises
:class:`RequestError`, answered as ``{"error": message}`` with its status.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from backends.base import Backend, pixel_size

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP")


class RequestError(Exception):
    """Answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Body:
    """An inference request's body and its Content-Type."""

    content: bytes
    content_type: str = ""

    def json(self) -> Any:
        """The body parsed as JSON."""
        try:
            return json.loads(self.content)
        except ValueError as error:
            raise RequestError(400, f"the request body is not valid JSON: {error}") from error
        except RecursionError:
            raise RequestError(400, "the request body is JSON nested too deeply") from None


@dataclass(frozen=True)
class Route:
    """One endpoint of a protocol. ``handle(model)`` answers JSON; where ``infers``, ``handle(model, body)``
    returns (the JSON answer, the number of images scored). A ``{model}`` in ``path`` must be the served name
    (the server checks it before calling)."""

    method: str
    path: str
    handle: Callable[..., Any]
    infers: bool = False


class ServedModel:
    """The served backend as handlers see it: its name, labels, input size and limits, and one scoring call
    at a time."""

    def __init__(self, backend: Backend, name: str, max_batch: int, max_pixels: int):
        self.backend = backend
        self.name = name
        self.labels = list(backend.labels)
        self.image_size = pixel_size(backend.image_size)
        self.max_batch = max_batch
        self.max_pixels = max_pixels
        self._lock = threading.Lock()  # one backend query at a time, in the threadpool

    def check_name(self, model: str) -> None:
        if model != self.name:
            raise RequestError(404, f"model {model!r} not found; this server serves {self.name!r}")

    def check_count(self, count: int) -> None:
        if count == 0:
            raise RequestError(400, "the request holds no images")
        if count > self.max_batch:
            raise RequestError(413, f"{count} images in one request; this server takes at most {self.max_batch} "
                                    "(its metadata says max_batch)")

    def decode(self, blobs: list[bytes]) -> np.ndarray:
        """(N, H, W, 3) uint8 images from encoded image files, counted and checked against the limits."""
        self.check_count(len(blobs))
        return np.stack([decode_image(blob, i, self.image_size, self.max_pixels) for i, blob in enumerate(blobs)])

    def score(self, images: np.ndarray) -> np.ndarray:
        with self._lock:
            return self.backend.query(images)


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


def base64_field(value: Any, where: str) -> bytes:
    """The bytes of a base64 string field named ``where``."""
    if not isinstance(value, str):
        raise RequestError(400, f"{where} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError as error:  # binascii.Error, or a non-ASCII string
        raise RequestError(400, f"{where} is not valid base64: {error}") from error


def json_object(body: Body, expected: str) -> dict[str, Any]:
    """The body as a JSON object; ``expected`` describes it in the error otherwise."""
    request = body.json()
    if not isinstance(request, dict):
        raise RequestError(400, f"expected {expected}")
    return request
