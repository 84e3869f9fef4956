"""Hugging Face's inference shapes: ``--format hf-image-classification`` and ``--format hf-zero-shot``.

The server's side: ``POST /hf/models/MODEL`` with the raw image bytes, or {"inputs": base64 image,
"parameters": {"top_k": k}} -> [{"label", "score"}, ...] of the k most probable labels (default
:data:`DEFAULT_TOP_K`), or with "parameters": {"candidate_labels": [...]} -> the model's scores of those
labels, renormalized over them (a zero-shot pipeline's answer).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from backends.errors import CodecError
from backends.http.codecs import FORMATS, Call, Codec, fill_partial, label_scores, png_base64
from backends.http.serving import Body, RequestError, Route, ServedModel, base64_field, json_object

DEFAULT_TOP_K = 5
"""Labels in an answer when the request names no ``top_k`` (the pipeline's default)."""


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
        return self.filled([label_scores(payload, "the answer")], labels)


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
        scores = label_scores(payload, "the answer")
        if set(scores) != set(labels):
            missing = sorted(set(labels) - set(scores))[:3]
            extra = sorted(set(scores) - set(labels))[:3]
            raise CodecError(f"the answer's labels are not the candidate labels (missing {missing}, "
                             f"unexpected {extra})")
        return fill_partial(scores, labels)[None]


# --- the server's side ---------------------------------------------------------------------------

def image_and_parameters(body: Body) -> tuple[bytes, dict[str, Any]]:
    """The image bytes and the ``parameters`` of a request: raw bytes, or the JSON shape."""
    if not body.content_type.startswith("application/json"):
        return body.content, {}
    request = json_object(body, '{"inputs": base64 image, "parameters": {...}}')
    parameters = request.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise RequestError(400, "'parameters' must be an object")
    return base64_field(request.get("inputs"), "inputs"), parameters


def ranked(model: ServedModel, scores: np.ndarray, parameters: dict[str, Any]) -> list[tuple[str, float]]:
    """(label, score) pairs, best first: the candidate labels renormalized, else the top ``top_k``."""
    candidates = parameters.get("candidate_labels")
    if candidates is not None:
        if not isinstance(candidates, list) or not candidates or not all(c in model.labels for c in candidates):
            raise RequestError(400, "candidate_labels must be a non-empty list of this model's labels")
        picked = np.array([scores[model.labels.index(c)] for c in candidates])
        return sorted(zip(candidates, picked / picked.sum()), key=lambda pair: -pair[1])
    top_k = parameters.get("top_k", DEFAULT_TOP_K)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise RequestError(400, f"top_k must be a positive integer, got {top_k!r}")
    return [(model.labels[i], scores[i]) for i in np.argsort(-scores, kind="stable")[:top_k]]


def predict(model: ServedModel, body: Body) -> tuple[list[dict[str, Any]], int]:
    blob, parameters = image_and_parameters(body)
    scores = model.score(model.decode([blob]))[0]
    return [{"label": label, "score": float(score)} for label, score in ranked(model, scores, parameters)], 1


ROUTES = [Route("POST", "/hf/models/{model}", predict, infers=True)]
