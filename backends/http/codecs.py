"""Wire formats: what every codec shares. Each protocol is one module of ``protocols/``, holding its codec
(registered here by name, ``--format``) and the server's side of it (``serving.py``).

A codec does no I/O. It turns a batch of images into the HTTP request(s) its protocol expects and
a parsed JSON answer into an (N, K) array of scores over the backend's labels; the client
(``client.py``) sends, retries and reports errors with the URL and status added. Anything that does
not follow the format raises :class:`CodecError`; nothing is guessed.

Formats that return only some labels (TorchServe's top 5, a Hugging Face ``top_k``) are filled
up to all K labels by :func:`fill_partial`.
"""

from __future__ import annotations

import base64
import io
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from backends.base import PROBABILITY_FLOOR
from backends.errors import CodecError, ConfigurationError
from backends.registry import Registry

PARTIAL_FLOOR = PROBABILITY_FLOOR
"""The least probability a label left out of a partial answer gets (before renormalizing)."""


@dataclass
class Call:
    """One HTTP request a codec wants sent."""

    method: str
    url: str
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class ModelInfo:
    """What a server says about its model; None where it says nothing."""

    labels: list[str] | None = None
    num_labels: int | None = None
    image_size: tuple[int, int] | None = None
    max_batch: int | None = None


@dataclass
class FloatInput:
    """How images become an FP32 tensor for a model that takes one: ``(pixels / 255 - mean) / std`` per
    channel (RGB), laid out ``nchw`` or ``nhwc``; None where the server's metadata should tell."""

    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    layout: str | None = None

    def tensor(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> the normalized float32 tensor in ``layout``."""
        pixels = (images.astype(np.float32) / 255.0 - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2) if self.layout == "nchw" else pixels)


@dataclass
class CodecOptions:
    """What the client was told about the format beyond its URL; each codec reads the options it takes."""

    float_input: FloatInput = field(default_factory=FloatInput)  # oip-v2 models that take FP32 pixels
    chat_model: str | None = None  # openai-chat: the model to ask (--chat-model)


Fetch = Callable[[Call], Any]
"""Sends a metadata request; returns the parsed JSON answer, or None when the server answers 404."""


class Codec(ABC):
    """One wire format. ``batched``: one request may carry several images.

    ``keyed``: answers name their labels (so labels must be unique and every named label known).
    ``model_outputs``: the answer passes on what the model's last layer gives, probabilities or logits
    (``--scores auto`` tells which); otherwise the format itself says they are probabilities.
    """

    name: ClassVar[str]
    batched: ClassVar[bool]
    keyed: ClassVar[bool]
    model_outputs: ClassVar[bool] = False

    def __init__(self, url: str, options: CodecOptions | None = None):
        self.url = url.rstrip("/")
        self.options = options or CodecOptions()
        self.reported: int | None = None  # labels named in the last keyed answer (the fewest over its rows)

    def filled(self, rows: list[dict[str, float]], labels: Sequence[str]) -> np.ndarray:
        """Keyed answers' rows over all ``labels`` (:func:`fill_partial`); keeps how many labels they named."""
        self.reported = min(len(row) for row in rows) if rows else None
        return np.stack([fill_partial(row, labels) for row in rows])

    def discover(self, fetch: Fetch) -> ModelInfo:
        """Ask the server about its model (labels, input size, batch limit) where the protocol can."""
        return ModelInfo()

    @abstractmethod
    def encode(self, images: np.ndarray, labels: Sequence[str]) -> Call:
        """The request for ``images`` (one image when not ``batched``)."""

    @abstractmethod
    def decode(self, payload: Any, count: int, labels: Sequence[str]) -> np.ndarray:
        """Scores (count, K) over ``labels`` from the parsed JSON answer."""


FORMATS: Registry[type[Codec]] = Registry("format")


# --- images and numbers ---------------------------------------------------------------------------

def encode_png(image: np.ndarray) -> bytes:
    """Lossless PNG bytes of one uint8 (H, W, 3) image."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def png_base64(image: np.ndarray) -> str:
    return base64.b64encode(encode_png(image)).decode("ascii")


def dense_scores(values: Any, count: int, labels: Sequence[str], what: str) -> np.ndarray:
    """A (count, K) float array from nested lists or a flat row-major list of numbers."""
    try:
        array = np.asarray(values)
    except ValueError as error:  # ragged nesting
        raise CodecError(f"{what} is not a rectangular array of numbers: {error}") from error
    if array.dtype.kind not in "iuf":
        raise CodecError(f"{what} holds non-numbers (array dtype {array.dtype}); expected numbers only")
    if array.size != count * len(labels):
        raise CodecError(f"{what} has shape {list(array.shape)}, expected {count} x {len(labels)} "
                         f"({count} images, {len(labels)} labels)")
    return array.astype(np.float64).reshape(count, len(labels))


def number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CodecError(f"{what} is {value!r}, not a number")
    if not np.isfinite(value) or value < 0:
        raise CodecError(f"{what} is {value!r}; probabilities must be finite and >= 0")
    return float(value)


def fill_partial(reported: dict[str, float], labels: Sequence[str]) -> np.ndarray:
    """Probabilities over all ``labels`` from scores reported for only some of them.

    Each label left out gets an even share of the mass the reported scores leave (1 - their sum),
    at most the smallest reported score and at least ``PARTIAL_FLOOR``; the row is then
    renormalized to sum to 1. A name that appears at several positions of ``labels`` (the standard
    ImageNet list has 'crane' and 'maillot' twice) cannot be told apart in a keyed answer: its score
    goes to its first position, and the later ones are left out.
    """
    if not reported:
        raise CodecError("the answer holds no scores at all")
    index: dict[str, int] = {}
    for i, label in enumerate(labels):  # a name that repeats (ImageNet's 'crane'): its score goes to the first
        index.setdefault(label, i)
    row = np.full(len(labels), np.nan)
    for label, score in reported.items():
        if label not in index:
            raise CodecError(f"label {label!r} is not one of the {len(labels)} known labels "
                             f"({', '.join(map(repr, labels[:3]))}, ...); check the labels file")
        row[index[label]] = score
    missing = np.isnan(row)
    if missing.any():
        leftover = max(0.0, 1.0 - sum(reported.values()))
        row[missing] = max(min(leftover / missing.sum(), min(reported.values())), PARTIAL_FLOOR)
    return row / row.sum()


def label_scores(items: Any, what: str) -> dict[str, float]:
    """{label: score} from Hugging Face's [{"label": ..., "score": ...}, ...]."""
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise CodecError(f"{what} is not a list of {{'label', 'score'}} objects")
    scores: dict[str, float] = {}
    for item in items:
        label = item.get("label")
        if not isinstance(label, str):
            raise CodecError(f"{what}: an entry has no string 'label': {item!r}")
        if label in scores:
            raise CodecError(f"{what}: label {label!r} appears twice")
        scores[label] = number(item.get("score"), f"{what}: score of {label!r}")
    return scores


def keyed_scores(mapping: Any, what: str) -> dict[str, float]:
    """{label: score} from a JSON object such as TorchServe's {"tabby": 0.4, ...}."""
    if not isinstance(mapping, dict):
        raise CodecError(f"{what} is not a {{label: score}} object")
    return {str(label): number(score, f"{what}: score of {label!r}") for label, score in mapping.items()}


def model_url(url: str, marker: str, listing: list[str] | None, example: str) -> str:
    """``url`` if it already names a model (contains ``marker``), else base + marker + the one model listed."""
    if marker in urlsplit(url).path:
        return url
    if listing is None:
        raise CodecError(f"{url} lists no models; give the model's own URL, e.g. {example}")
    if len(listing) != 1:
        raise CodecError(f"{url} serves {len(listing)} models ({', '.join(listing) or 'none'}); "
                         f"give the model's own URL, e.g. {example}")
    return f"{url}{marker}{listing[0]}"


def model_names(payload: Any, what: str) -> list[str] | None:
    """Model names from {"models": [...]} (KServe) or [{"name": ...}, ...] (repository index)."""
    if payload is None:
        return None
    entries = payload.get("models") if isinstance(payload, dict) else payload
    if not isinstance(entries, list):
        raise CodecError(f"{what} is not a model list")
    names = [entry.get("name") if isinstance(entry, dict) else entry for entry in entries]
    strings = [name for name in names if isinstance(name, str)]
    if len(strings) != len(names):
        raise CodecError(f"{what} holds entries without a model name")
    return strings


def size_field(value: Any, what: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 2 or not known_dims(value):
        raise CodecError(f"{what} is {value!r}, expected [height, width]")
    return value[0], value[1]


def known_dims(values: list[Any]) -> bool:
    """Whether tensor dimensions are all known (positive integers, not -1)."""
    return all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)


def positive_int(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CodecError(f"{what} is {value!r}, expected a positive integer")
    return value


def string_list(value: Any, what: str) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CodecError(f"{what} is not a list of strings")
    return value


# --- label files --------------------------------------------------------------------------------

def load_labels(path: str | Path) -> list[str]:
    """Labels from a file: one per line (blank lines skipped), a JSON list, or a JSON object
    {"0": "name", ...} / {"0": ["id", "name"], ...} (TorchServe's index_to_name.json)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() != ".json":
        labels = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        try:
            data = json.loads(text)
        except ValueError as error:
            raise ConfigurationError(f"labels file {path} is not valid JSON: {error}") from error
        if isinstance(data, dict):
            try:
                order = sorted(data, key=int)
            except ValueError as error:
                raise ConfigurationError(f"labels file {path}: keys must be indices 0..K-1") from error
            if [int(key) for key in order] != list(range(len(order))):
                raise ConfigurationError(f"labels file {path}: keys must be the indices 0..{len(order) - 1}, each once")
            data = [data[key][-1] if isinstance(data[key], list) and data[key] else data[key] for key in order]
        if not isinstance(data, list) or not all(isinstance(label, str) for label in data):
            raise ConfigurationError(f"labels file {path} must hold a list of strings or an index -> name object")
        labels = data
    if not labels:
        raise ConfigurationError(f"labels file {path} holds no labels")
    return labels
