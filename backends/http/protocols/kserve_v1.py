"""KServe's V1 protocol (also TensorFlow Serving's REST shape): ``--format kserve-v1``.

The server's side: ``GET /v1/models`` -> {"models": [MODEL]}; ``GET /v1/models/MODEL`` -> {"name", "ready"};
``POST /v1/models/MODEL:predict`` {"instances": [{"image": {"b64": PNG}}, ...]} -> {"predictions":
[[K numbers], ...]}. V1 carries no labels or input size: the client takes them from its options.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from backends.errors import CodecError
from backends.http.codecs import (
    FORMATS,
    Call,
    Codec,
    CodecOptions,
    Fetch,
    ModelInfo,
    dense_scores,
    keyed_scores,
    model_names,
    model_url,
    png_base64,
)
from backends.http.protocols.oip_v2 import model_list, model_ready  # V1 answers these as V2 does
from backends.http.serving import Body, RequestError, Route, ServedModel, base64_field, json_object


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

    def __init__(self, url: str, options: CodecOptions | None = None):
        super().__init__(url, options)
        self.model_url = self.url

    def discover(self, fetch: Fetch) -> ModelInfo:
        if "/v1/models/" not in urlsplit(self.url).path:
            where = f"{self.url}/v1/models"
            self.model_url = model_url(self.url, "/v1/models/", model_names(fetch(Call("GET", where)), where),
                                        f"{self.url}/v1/models/MODEL")
        return ModelInfo()

    def encode(self, images: np.ndarray, labels: Sequence[str]) -> Call:
        instances = [{"image": {"b64": png_base64(image)}} for image in images]
        return Call("POST", f"{self.model_url}:predict", json={"instances": instances})

    def decode(self, payload: Any, count: int, labels: Sequence[str]) -> np.ndarray:
        predictions = payload.get("predictions") if isinstance(payload, dict) else None
        if not isinstance(predictions, list) or len(predictions) != count:
            raise CodecError(f"expected 'predictions' with {count} entries")
        keyed = {i: keyed_scores(p, f"prediction {i}") for i, p in enumerate(predictions) if isinstance(p, dict)}
        self.reported = None  # unless keyed rows come (filled says how many labels they name)
        filled = dict(zip(keyed, self.filled(list(keyed.values()), labels))) if keyed else {}
        return np.stack([filled[i] if i in filled else dense_scores(p, 1, labels, f"prediction {i}")[0]
                         for i, p in enumerate(predictions)])


# --- the server's side ---------------------------------------------------------------------------

def instance_image(instance: Any, index: int) -> bytes:
    """The image bytes of one instance, {"image": {"b64": ...}}."""
    image = instance.get("image") if isinstance(instance, dict) else None
    if not isinstance(image, dict):
        raise RequestError(400, f'instances[{index}] must be {{"image": {{"b64": base64 PNG}}}}')
    return base64_field(image.get("b64"), f"instances[{index}].image.b64")


def predict(model: ServedModel, body: Body) -> tuple[dict[str, Any], int]:
    expected = '{"instances": [{"image": {"b64": base64 PNG}}, ...]}'
    instances = json_object(body, expected).get("instances")
    if not isinstance(instances, list):
        raise RequestError(400, f"expected {expected}")
    pixels = model.decode([instance_image(instance, i) for i, instance in enumerate(instances)])
    return {"predictions": model.score(pixels).tolist()}, len(pixels)


ROUTES = [
    Route("GET", "/v1/models", model_list),
    Route("GET", "/v1/models/{model}", model_ready),
    Route("POST", "/v1/models/{model}:predict", predict, infers=True),
]
