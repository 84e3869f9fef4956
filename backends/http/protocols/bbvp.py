"""This project's own JSON protocol (``--format bbvp``, what ``bbvp serve`` speaks first).

``GET /bbvp/v1/model`` -> {"name", "labels", "image_size", "max_batch"};
``POST /bbvp/v1/predict`` {"images": [base64 PNG, ...]} -> {"scores": [[K numbers], ...]}.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from backends.errors import CodecError
from backends.http.codecs import (
    FORMATS,
    Call,
    Codec,
    Fetch,
    ModelInfo,
    dense_scores,
    png_base64,
    positive_int,
    size_field,
    string_list,
)
from backends.http.serving import Body, RequestError, Route, ServedModel, base64_field, json_object


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
        labels = string_list(meta.get("labels"), f"{where}: 'labels'")
        if labels is None:
            raise CodecError(f"{where} names no 'labels'")
        return ModelInfo(labels=labels, num_labels=len(labels),
                         image_size=size_field(meta.get("image_size"), f"{where}: 'image_size'"),
                         max_batch=positive_int(meta.get("max_batch"), f"{where}: 'max_batch'"))

    def encode(self, images: np.ndarray, labels: Sequence[str]) -> Call:
        return Call("POST", f"{self.url}/bbvp/v1/predict", json={"images": [png_base64(image) for image in images]})

    def decode(self, payload: Any, count: int, labels: Sequence[str]) -> np.ndarray:
        if not isinstance(payload, dict) or "scores" not in payload:
            raise CodecError("the answer has no 'scores'")
        return dense_scores(payload["scores"], count, labels, "'scores'")


# --- the server's side ---------------------------------------------------------------------------

def metadata(model: ServedModel) -> dict[str, Any]:
    return {"name": model.name, "labels": model.labels, "image_size": list(model.image_size),
            "max_batch": model.max_batch}


def predict(model: ServedModel, body: Body) -> tuple[dict[str, Any], int]:
    images = json_object(body, '{"images": [base64 PNG, ...]}').get("images")
    if not isinstance(images, list):
        raise RequestError(400, 'expected {"images": [base64 PNG, ...]}')
    pixels = model.decode([base64_field(image, f"images[{i}]") for i, image in enumerate(images)])
    return {"scores": model.score(pixels).tolist()}, len(pixels)


ROUTES = [Route("GET", "/bbvp/v1/model", metadata), Route("POST", "/bbvp/v1/predict", predict, infers=True)]
