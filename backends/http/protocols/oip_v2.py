"""Open Inference Protocol V2 (KServe V2, MLServer, Triton): ``--format oip-v2``.

The server's side: ``GET /v2``, ``GET /v2/models``, ``POST /v2/repository/index``, ``GET /v2/models/MODEL``
(labels, input size and batch limit in ``parameters``), ``GET /v2/models/MODEL/ready`` and
``POST /v2/models/MODEL/infer`` with one BYTES tensor (base64 PNG) or UINT8 tensor [N, H, W, 3]; the answer
is one FP32 output, "scores" [N, K].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
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
    known_dims,
    model_names,
    model_url,
    png_base64,
    positive_int,
    size_field,
    string_list,
)
from backends.http.serving import Body, RequestError, Route, ServedModel, base64_field, json_object


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

    def __init__(self, url: str, options: CodecOptions | None = None):
        super().__init__(url, options)
        self.model_url = self.url
        self.input_name = "image"
        self.datatype = "BYTES"
        self.output_name: str | None = None
        self.float_input = replace(self.options.float_input)  # its layout may be read from the metadata

    def discover(self, fetch: Fetch) -> ModelInfo:
        if "/v2/models/" not in urlsplit(self.url).path:
            listing = model_names(fetch(Call("GET", f"{self.url}/v2/models")), f"{self.url}/v2/models")
            if listing is None:
                where = f"{self.url}/v2/repository/index"
                listing = model_names(fetch(Call("POST", where, json={"ready": True})), where)
            self.model_url = model_url(self.url, "/v2/models/", listing, f"{self.url}/v2/models/MODEL")
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
            elif self.datatype == "UINT8" and len(shape) == 4 and known_dims(shape[1:3]):
                info.image_size = (shape[1], shape[2])
        if outputs:
            self.output_name = outputs[0].get("name")
            shape = outputs[0].get("shape") or []
            if len(shape) == 2 and known_dims(shape[1:]):
                info.num_labels = shape[1]
        parameters = meta.get("parameters") or {}
        where = f"{self.model_url}: parameters"
        info.labels = string_list(parameters.get("labels"), f"{where}.labels")
        info.image_size = size_field(parameters.get("image_size"), f"{where}.image_size") or info.image_size
        info.max_batch = (positive_int(parameters.get("max_batch"), f"{where}.max_batch")
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
            if known_dims([height, width]):
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


# --- the server's side ---------------------------------------------------------------------------

def server_metadata(model: ServedModel) -> dict[str, Any]:
    return {"name": "blackbox-vp", "version": "0.1.0", "extensions": ["model_repository"]}


def model_list(model: ServedModel) -> dict[str, Any]:
    return {"models": [model.name]}


def repository_index(model: ServedModel) -> list[dict[str, Any]]:
    return [{"name": model.name, "version": "1", "state": "READY", "reason": ""}]


def model_metadata(model: ServedModel) -> dict[str, Any]:
    return {"name": model.name, "versions": ["1"], "platform": "blackbox-vp",
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "scores", "datatype": "FP32", "shape": [-1, len(model.labels)]}],
            "parameters": {"labels": model.labels, "image_size": list(model.image_size), "max_batch": model.max_batch}}


def model_ready(model: ServedModel) -> dict[str, Any]:
    return {"name": model.name, "ready": True}


def uint8_tensor(tensor: dict[str, Any], size: tuple[int, int], max_pixels: int) -> np.ndarray:
    """Images from a UINT8 tensor of shape [N, H, W, 3] (data flat row-major or nested)."""
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


def input_images(model: ServedModel, tensor: dict[str, Any]) -> np.ndarray:
    """The images of the one input tensor, BYTES (base64 encoded images) or UINT8."""
    if tensor.get("datatype") == "BYTES":
        data = tensor.get("data")
        if not isinstance(data, list) or tensor.get("shape") != [len(data)]:
            raise RequestError(400, "a BYTES input needs shape [N] and N base64 strings in 'data'")
        return model.decode([base64_field(item, f"data[{i}]") for i, item in enumerate(data)])
    if tensor.get("datatype") == "UINT8":
        pixels = uint8_tensor(tensor, model.image_size, model.max_pixels)
        model.check_count(len(pixels))
        return pixels
    raise RequestError(400, f"input datatype {tensor.get('datatype')!r} not supported; send BYTES or UINT8")


def infer(model: ServedModel, body: Body) -> tuple[dict[str, Any], int]:
    request = json_object(body, "one input tensor in 'inputs'")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise RequestError(400, "expected one input tensor in 'inputs'")
    pixels = input_images(model, inputs[0])
    scores = model.score(pixels).astype(np.float32)
    output = {"name": "scores", "datatype": "FP32", "shape": list(scores.shape), "data": scores.ravel().tolist()}
    answer: dict[str, Any] = {"model_name": model.name, "model_version": "1", "outputs": [output]}
    if isinstance(request.get("id"), str):
        answer["id"] = request["id"]
    return answer, len(pixels)


ROUTES = [
    Route("GET", "/v2", server_metadata),
    Route("GET", "/v2/models", model_list),
    Route("POST", "/v2/repository/index", repository_index),
    Route("GET", "/v2/models/{model}", model_metadata),
    Route("GET", "/v2/models/{model}/ready", model_ready),
    Route("POST", "/v2/models/{model}/infer", infer, infers=True),
]
