"""TorchServe's inference API: ``--format torchserve``.

The server's side: ``GET /ping`` -> {"status": "Healthy"}; ``POST /predictions/MODEL`` with one image file as
the raw body -> {label: probability} for the :data:`TOP_K` most probable labels, as TorchServe's
``image_classifier`` handler answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from backends.errors import CodecError
from backends.http.codecs import FORMATS, Call, Codec, Fetch, ModelInfo, encode_png, keyed_scores
from backends.http.serving import Body, Route, ServedModel

TOP_K = 5
"""Labels in each answer (TorchServe's ``image_classifier`` handler's ``topk``)."""


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
        return self.filled([keyed_scores(payload, "the answer")], labels)


# --- the server's side ---------------------------------------------------------------------------

def ping(model: ServedModel) -> dict[str, Any]:
    return {"status": "Healthy"}


def predict(model: ServedModel, body: Body) -> tuple[dict[str, float], int]:
    scores = model.score(model.decode([body.content]))[0]
    order = np.argsort(-scores, kind="stable")[:TOP_K]
    answer: dict[str, float] = {}
    for i in order:  # a name that repeats (ImageNet's 'crane') keeps its highest score
        answer.setdefault(model.labels[i], float(scores[i]))
    return answer, 1


ROUTES = [Route("GET", "/ping", ping), Route("POST", "/predictions/{model}", predict, infers=True)]
