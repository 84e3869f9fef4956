"""Wire formats: one small codec per protocol, registered by name (``--format``).

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

    def __init__(self, url: str):
        self.url = url.rstrip("/")
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


def _number(value: Any, what: str) -> float:
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


def _label_scores(items: Any, what: str) -> dict[str, float]:
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
        scores[label] = _number(item.get("score"), f"{what}: score of {label!r}")
    return scores


def _keyed_scores(mapping: Any, what: str) -> dict[str, float]:
    """{label: score} from a JSON object such as TorchServe's {"tabby": 0.4, ...}."""
    if not isinstance(mapping, dict):
        raise CodecError(f"{what} is not a {{label: score}} object")
    return {str(label): _number(score, f"{what}: score of {label!r}") for label, score in mapping.items()}


def _model_url(url: str, marker: str, listing: list[str] | None, example: str) -> str:
    """``url`` if it already names a model (contains ``marker``), else base + marker + the one model listed."""
    if marker in urlsplit(url).path:
        return url
    if listing is None:
        raise CodecError(f"{url} lists no models; give the model's own URL, e.g. {example}")
    if len(listing) != 1:
        raise CodecError(f"{url} serves {len(listing)} models ({', '.join(listing) or 'none'}); "
                         f"give the model's own URL, e.g. {example}")
    return f"{url}{marker}{listing[0]}"


def _names(payload: Any, what: str) -> list[str] | None:
    """Model names from {"models": [...]} (KServe) or [{"name": ...}, ...] (repository index)."""
    if payload is None:
        return None
    entries = payload.get("models") if isinstance(payload, dict) else payload
    if not isinstance(entries, list):
        raise CodecError(f"{what} is not a model list")
    names = [entry.get("name") if isinstance(entry, dict) else entry for entry in entries]
    if not all(isinstance(name, str) for name in names):
        raise CodecError(f"{what} holds entries without a model name")
    return names


def _size(value: Any, what: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 2 or not _dims(value):
        raise CodecError(f"{what} is {value!r}, expected [height, width]")
    return value[0], value[1]


def _dims(values: list[Any]) -> bool:
    """Whether tensor dimensions are all known (positive integers, not -1)."""
    return all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)


def _positive_int(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CodecError(f"{what} is {value!r}, expected a positive integer")
    return value


def _string_list(value: Any, what: str) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CodecError(f"{what} is not a list of strings")
    return value


# --- the formats --------------------------------------------------------------------------------

@FORMATS.register("bbvp", "this project's JSON protocol (bbvp serve): batches, labels and input size from /bbvp/v1/model")
class BbvpCodec(Codec):
    """``GET {url}/bbvp/v1/model``; ``POST {url}/bbvp/v1/predict`` {"images": [base64 PNG]} -> {"scores"}."""

    batched = True
    keyed = False

    def discover(self, fetch: Fetch) -> ModelInfo:
        where = f"{self.url}/bbvp/v1/model"
        meta = fetch(Call("GET", where))
        if not isinstance(meta, dict):
            raise CodecError(f"{where} did not answer with the model's metadata; is this a `bbvp serve` server? "
                             "Otherwise pick its wire format with --format")
        labels = _string_list(meta.get("labels"), f"{where}: 'labels'")
        if labels is None:
            raise CodecError(f"{where} names no 'labels'")
        return ModelInfo(labels=labels, num_labels=len(labels),
                         image_size=_size(meta.get("image_size"), f"{where}: 'image_size'"),
                         max_batch=_positive_int(meta.get("max_batch"), f"{where}: 'max_batch'"))

    def encode(self, images: np.ndarray, labels: Sequence[str]) -> Call:
        return Call("POST", f"{self.url}/bbvp/v1/predict", json={"images": [png_base64(image) for image in images]})

    def decode(self, payload: Any, count: int, labels: Sequence[str]) -> np.ndarray:
        if not isinstance(payload, dict) or "scores" not in payload:
            raise CodecError("the answer has no 'scores'")
        return dense_scores(payload["scores"], count, labels, "'scores'")


@FORMATS.register("oip-v2", "Open Inference Protocol / KServe V2 (KServe, MLServer, Triton): BYTES base64 PNG, UINT8 "
                    "or normalized FP32 tensor in, FP32 [N, K] out")
class OipV2Codec(Codec):
    """``POST {model}/infer`` with one input tensor; the scores are one output of shape [N, K].

    The URL is the model's (``.../v2/models/NAME``) or the server's, which must then list exactly one
    model. The model metadata picks the input (a UINT8 [-1, H, W, 3] tensor; an FP32 [-1, 3, H, W] or
    [-1, H, W, 3] one, normalized by :class:`FloatInput`; else base64 PNG in a BYTES tensor) and the output; its ``parameters`` may carry ``labels``, ``image_size`` and
    ``max_batch`` (``bbvp serve`` sends them, other servers may not).
    """

    batched = True
    keyed = False
    model_outputs = True

    def __init__(self, url: str):
        super().__init__(url)
        self.model_url = self.url
        self.input_name = "image"
        self.datatype = "BYTES"
        self.output_name: str | None = None
        self.float_input = FloatInput()  # the client's --input-mean, --input-std, --input-layout, for FP32

    def discover(self, fetch: Fetch) -> ModelInfo:
        if "/v2/models/" not in urlsplit(self.url).path:
            listing = _names(fetch(Call("GET", f"{self.url}/v2/models")), f"{self.url}/v2/models")
            if listing is None:
                where = f"{self.url}/v2/repository/index"
                listing = _names(fetch(Call("POST", where, json={"ready": True})), where)
            self.model_url = _model_url(self.url, "/v2/models/", listing, f"{self.url}/v2/models/MODEL")
        meta = fetch(Call("GET", self.model_url))
        if not isinstance(meta, dict):
            raise CodecError(f"{self.model_url} did not answer with model metadata; check the model name in the URL")
        info = ModelInfo()
        inputs, outputs = meta.get("inputs") or [], meta.get("outputs") or []
        if not all(isinstance(tensor, dict) for tensor in [*inputs, *outputs]):
            raise CodecError(f"{self.model_url}: 'inputs' and 'outputs' must be lists of tensor descriptions")
        if inputs:
            first = inputs[0]
            self.input_name = first.get("name", self.input_name)
            self.datatype = first.get("datatype", self.datatype)
            if self.datatype not in ("BYTES", "UINT8", "FP32"):
                raise CodecError(f"{self.model_url}: input {self.input_name!r} takes {self.datatype}; "
                                 "this client sends BYTES (base64 PNG), UINT8 or FP32 images")
            shape = first.get("shape") or []
            if self.datatype == "FP32":
                info.image_size = self._float_layout(shape)
            elif self.datatype == "UINT8" and len(shape) == 4 and _dims(shape[1:3]):
                info.image_size = (shape[1], shape[2])
        if outputs:
            self.output_name = outputs[0].get("name")
            shape = outputs[0].get("shape") or []
            if len(shape) == 2 and _dims(shape[1:]):
                info.num_labels = shape[1]
        parameters = meta.get("parameters") or {}
        where = f"{self.model_url}: parameters"
        info.labels = _string_list(parameters.get("labels"), f"{where}.labels")
        info.image_size = _size(parameters.get("image_size"), f"{where}.image_size") or info.image_size
        info.max_batch = (_positive_int(parameters.get("max_batch"), f"{where}.max_batch")
                          or self._triton_max_batch(fetch))
        return info

    def _float_layout(self, shape: list[Any]) -> tuple[int, int] | None:
        """For an FP32 input: its layout (given, else read from a [-1, 3, H, W] or [-1, H, W, 3] shape) and image
        size; refused without the model's normalization, which no metadata carries."""
        given = self.float_input
        where = f"{self.model_url}: input {self.input_name!r} takes FP32 {shape}"
        if given.mean is None or given.std is None:
            raise CodecError(f"{where}, pixels normalized as the model was trained; pass its normalization, e.g. "
                             "--input-mean 0.485,0.456,0.406 --input-std 0.229,0.224,0.225 for most ImageNet "
                             "classifiers (check the model's card)")
        if given.layout is None and len(shape) == 4:
            given.layout = "nchw" if shape[1] == 3 and shape[3] != 3 else "nhwc" if shape[3] == 3 else None
        if given.layout is None:
            raise CodecError(f"{where}, and its layout cannot be read from that shape; pass --input-layout nchw "
                             "(channels first, as exported PyTorch models take) or nhwc")
        if len(shape) == 4:
            height, width = (shape[2], shape[3]) if given.layout == "nchw" else (shape[1], shape[2])
            if _dims([height, width]):
                return height, width
        return None

    def _triton_max_batch(self, fetch: Fetch) -> int | None:
        """Triton keeps the batch limit in the model configuration, ``GET {model}/config``: ``max_batch_size``
        (0: the model takes no batch dimension). Other servers answer 404 there."""
        config = fetch(Call("GET", f"{self.model_url}/config"))
        if not isinstance(config, dict):
            return None
        limit = config.get("max_batch_size")
        return limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else None

    def encode(self, images: np.ndarray, labels: Sequence[str]) -> Call:
        if self.datatype == "FP32":
            pixels = self.float_input.tensor(images)
            tensor = {"name": self.input_name, "shape": list(pixels.shape), "datatype": "FP32",
                      "data": pixels.reshape(-1).tolist()}
        elif self.datatype == "UINT8":
            tensor = {"name": self.input_name, "shape": list(images.shape), "datatype": "UINT8",
                      "data": images.reshape(-1).tolist()}
        else:
            tensor = {"name": self.input_name, "shape": [len(images)], "datatype": "BYTES",
                      "data": [png_base64(image) for image in images]}
        return Call("POST", f"{self.model_url}/infer", json={"inputs": [tensor]})

    def decode(self, payload: Any, count: int, labels: Sequence[str]) -> np.ndarray:
        outputs = payload.get("outputs") if isinstance(payload, dict) else None
        if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs) or not outputs:
            raise CodecError("the answer has no 'outputs' list")
        if self.output_name is not None:
            chosen = [o for o in outputs if o.get("name") == self.output_name]
        else:
            chosen = outputs if len(outputs) == 1 else []
        if len(chosen) != 1:
            names = ", ".join(repr(o.get("name")) for o in outputs)
            raise CodecError(f"cannot tell which output holds the scores (outputs: {names}; "
                             f"metadata names {self.output_name!r})")
        output = chosen[0]
        if output.get("datatype") not in ("FP32", "FP64", "FP16"):
            raise CodecError(f"output {output.get('name')!r} has datatype {output.get('datatype')!r}, "
                             "expected FP32 scores")
        if output.get("shape") != [count, len(labels)]:
            raise CodecError(f"output {output.get('name')!r} has shape {output.get('shape')}, "
                             f"expected {[count, len(labels)]}")
        return dense_scores(output.get("data"), count, labels, f"output {output.get('name')!r} data")


@FORMATS.register("kserve-v1", "KServe V1: {\"instances\": [{\"image\": {\"b64\": PNG}}]}, predictions as K numbers or "
                       "{label: score}")
class KServeV1Codec(Codec):
    """``POST {model}:predict``; each prediction is a list of K numbers or a {label: score} object.

    The URL is the model's (``.../v1/models/NAME``) or the server's, which must list exactly one model.
    V1 has no label metadata: the labels come from a file.
    """

    batched = True
    keyed = False
    model_outputs = True

    def __init__(self, url: str):
        super().__init__(url)
        self.model_url = self.url

    def discover(self, fetch: Fetch) -> ModelInfo:
        if "/v1/models/" not in urlsplit(self.url).path:
            where = f"{self.url}/v1/models"
            self.model_url = _model_url(self.url, "/v1/models/", _names(fetch(Call("GET", where)), where),
                                        f"{self.url}/v1/models/MODEL")
        return ModelInfo()

    def encode(self, images: np.ndarray, labels: Sequence[str]) -> Call:
        instances = [{"image": {"b64": png_base64(image)}} for image in images]
        return Call("POST", f"{self.model_url}:predict", json={"instances": instances})

    def decode(self, payload: Any, count: int, labels: Sequence[str]) -> np.ndarray:
        predictions = payload.get("predictions") if isinstance(payload, dict) else None
        if not isinstance(predictions, list) or len(predictions) != count:
            raise CodecError(f"expected 'predictions' with {count} entries")
        keyed = {i: _keyed_scores(p, f"prediction {i}") for i, p in enumerate(predictions) if isinstance(p, dict)}
        self.reported = None  # unless keyed rows come (filled says how many labels they name)
        filled = dict(zip(keyed, self.filled(list(keyed.values()), labels))) if keyed else {}
        return np.stack([filled[i] if i in filled else dense_scores(p, 1, labels, f"prediction {i}")[0]
                         for i, p in enumerate(predictions)])


@FORMATS.register("torchserve", "TorchServe: POST /predictions/MODEL, one raw PNG per request, {label: prob} top 5 back "
                        "(other labels filled, see PARTIAL_FLOOR)")
class TorchServeCodec(Codec):
    """One image per request as the raw body; the answer is {label: probability} for the top labels."""

    batched = False
    keyed = True

    def discover(self, fetch: Fetch) -> ModelInfo:
        if "/predictions/" not in urlsplit(self.url).path:
            raise CodecError(f"{self.url} is not a TorchServe model URL; it looks like "
                             "http://HOST:8080/predictions/MODEL")
        return ModelInfo()

    def encode(self, images: np.ndarray, labels: Sequence[str]) -> Call:
        return Call("POST", self.url, content=encode_png(images[0]), headers={"Content-Type": "image/png"})

    def decode(self, payload: Any, count: int, labels: Sequence[str]) -> np.ndarray:
        if isinstance(payload, list) and len(payload) == 1:  # some handlers wrap the one answer in a list
            payload = payload[0]
        return self.filled([_keyed_scores(payload, "the answer")], labels)


@FORMATS.register("hf-image-classification", "Hugging Face image-classification: one base64 image per request, "
                                     "[{label, score}] back (asks top_k = K; missing labels filled)")
class HFImageClassificationCodec(Codec):
    """``POST {url}`` {"inputs": base64 PNG, "parameters": {"top_k": K}}; the URL is the model's endpoint."""

    batched = False
    keyed = True

    def encode(self, images: np.ndarray, labels: Sequence[str]) -> Call:
        return Call("POST", self.url, json={"inputs": png_base64(images[0]), "parameters": {"top_k": len(labels)}})

    def decode(self, payload: Any, count: int, labels: Sequence[str]) -> np.ndarray:
        if isinstance(payload, list) and len(payload) == 1 and isinstance(payload[0], list):
            payload = payload[0]  # batched pipelines nest one list per image
        return self.filled([_label_scores(payload, "the answer")], labels)


@FORMATS.register("hf-zero-shot", "Hugging Face zero-shot-image-classification: the labels are the candidate labels, "
                          "sent with every image")
class HFZeroShotCodec(Codec):
    """``POST {url}`` {"inputs": base64 PNG, "parameters": {"candidate_labels": labels}}; every candidate must
    come back (the scores are a softmax over them)."""

    batched = False
    keyed = True

    def encode(self, images: np.ndarray, labels: Sequence[str]) -> Call:
        return Call("POST", self.url, json={"inputs": png_base64(images[0]),
                                            "parameters": {"candidate_labels": list(labels)}})

    def decode(self, payload: Any, count: int, labels: Sequence[str]) -> np.ndarray:
        scores = _label_scores(payload, "the answer")
        if set(scores) != set(labels):
            missing = sorted(set(labels) - set(scores))[:3]
            extra = sorted(set(scores) - set(labels))[:3]
            raise CodecError(f"the answer's labels are not the candidate labels (missing {missing}, "
                             f"unexpected {extra})")
        return fill_partial(scores, labels)[None]


CHAT_QUESTION = ("Which one of these is shown in the image: {classes}? Answer with exactly one of them, "
                 "nothing else.")
CHAT_TOP_LOGPROBS = 20  # the most that OpenAI's API returns; other servers take it as asked


@FORMATS.register("openai-chat", "a chat VLM as a zero-shot classifier (OpenAI-compatible /v1/chat/completions: vLLM, "
                         "Ollama, hosted APIs): the labels are the class names asked for; top_logprobs back")
class OpenAIChatCodec(Codec):
    """``POST {base}/v1/chat/completions`` with the image as a data URL and :data:`CHAT_QUESTION`, asking for
    one token and its ``top_logprobs``. A class scores the probability of the answer tokens that begin its name
    (case and spaces aside) and begin no other class's; classes no token names share what is left
    (:func:`fill_partial`); an answer naming no class scores every class alike (the model did not know).

    The URL is the server's (``http://host:8000``, ``.../v1``) or the endpoint itself; ``model`` (``--chat-model``)
    names the model, else the one model that ``GET {base}/v1/models`` lists. Class names should differ in their
    first word, since the answer is read from its first token.
    """

    batched = False
    keyed = True

    def __init__(self, url: str):
        super().__init__(url)
        path = urlsplit(self.url).path
        base = self.url[: -len("/chat/completions")] if path.endswith("/chat/completions") else self.url
        self.base = base if base.endswith("/v1") else f"{base}/v1"
        self.model: str | None = None

    def discover(self, fetch: Fetch) -> ModelInfo:
        if self.model is None:
            where = f"{self.base}/models"
            listing = fetch(Call("GET", where))
            models = listing.get("data") if isinstance(listing, dict) else None
            names = [entry.get("id") for entry in models if isinstance(entry, dict)] if isinstance(models, list) else []
            if len(names) != 1 or not isinstance(names[0], str):
                raise CodecError(f"{where} lists {len(names)} models ({', '.join(map(str, names[:5])) or 'none'}); "
                                 "name the one to ask with --chat-model")
            self.model = names[0]
        return ModelInfo()

    def encode(self, images: np.ndarray, labels: Sequence[str]) -> Call:
        question = CHAT_QUESTION.format(classes=", ".join(labels))
        content = [{"type": "text", "text": question},
                   {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png_base64(images[0])}"}}]
        return Call("POST", f"{self.base}/chat/completions",
                    json={"model": self.model, "messages": [{"role": "user", "content": content}], "max_tokens": 1,
                          "temperature": 0, "logprobs": True, "top_logprobs": CHAT_TOP_LOGPROBS})

    def decode(self, payload: Any, count: int, labels: Sequence[str]) -> np.ndarray:
        try:
            first = payload["choices"][0]["logprobs"]["content"][0]
            candidates = first.get("top_logprobs") or [first]
        except (KeyError, IndexError, TypeError):
            raise CodecError("the answer has no choices[0].logprobs.content[0] (ask a server that returns "
                             "logprobs; vLLM, Ollama and OpenAI do)") from None
        names = [label.strip().lower() for label in labels]
        reported: dict[str, float] = {}
        for candidate in candidates:
            if not isinstance(candidate, dict) or not isinstance(candidate.get("token"), str):
                raise CodecError(f"a top_logprobs entry is not {{'token', 'logprob'}}: {candidate!r}")
            token = candidate["token"].strip().lower()
            matching = [i for i, name in enumerate(names) if token and name.startswith(token)]
            logprob = candidate.get("logprob")
            if len(matching) == 1 and isinstance(logprob, int | float) and not isinstance(logprob, bool):
                label = labels[matching[0]]
                reported[label] = reported.get(label, 0.0) + float(np.exp(min(logprob, 0.0)))
        if not reported:  # no token names a class: no information about this image
            return np.full((1, len(labels)), 1.0 / len(labels))
        return fill_partial(reported, labels)[None]  # partial by nature (20 tokens at most): not warned about


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
