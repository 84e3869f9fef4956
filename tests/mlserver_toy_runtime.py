"""backends.toy.ToyBackend as an MLServer custom runtime (used by test_mlserver.py).

Each model's model-settings.json names this class as its ``implementation`` and gives, in
``parameters.extra``, ``count_file`` (written after each infer with the number of images scored so far)
and ``scores``: "probabilities" (the toy's own) or "logits" (their log plus ``LOGIT_SHIFT``, what an
exported classifier's last layer gives). The input is a BYTES tensor of base64 PNGs (the settings' input
metadata names content type "base64", so ``self.decode`` unpacks it) or a UINT8 [N, H, W, 3] tensor;
the scores go back as one FP32 [N, 20] output named "scores".
"""

import io
import os

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from PIL import Image

from backends.toy import ToyBackend

LOGIT_SHIFT = 3.0
"""Added to the log-probabilities: logits are log-probabilities up to a constant per row."""


class ToyRuntime(MLModel):
    async def load(self) -> bool:
        extra = self.settings.parameters.extra
        self.toy = ToyBackend()
        self.count_file = extra["count_file"]
        self.logits = extra["scores"] == "logits"
        self.images = 0
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        if len(payload.inputs) != 1:
            raise ValueError(f"expected one input tensor, got {len(payload.inputs)}")
        request_input = payload.inputs[0]
        if request_input.datatype == "BYTES":
            pngs = self.decode(request_input)  # the base64 codec (the metadata's content type): a list of bytes
            if not isinstance(pngs, list) or not all(isinstance(png, bytes) for png in pngs):
                raise ValueError(f"the base64 codec did not give a list of bytes: {type(pngs).__name__}")
            images = np.stack([np.asarray(Image.open(io.BytesIO(png)).convert("RGB")) for png in pngs])
        else:
            images = self.decode(request_input, default_codec=NumpyCodec)
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
                raise ValueError(f"expected uint8 [N, H, W, 3], got {images.dtype} {list(images.shape)}")
        scores = self.toy.query(images)
        if self.logits:
            scores = np.log(scores) + LOGIT_SHIFT
        self.images += len(images)
        with open(self.count_file + ".tmp", "w") as handle:
            handle.write(str(self.images))
        os.replace(self.count_file + ".tmp", self.count_file)
        output = NumpyCodec.encode_output("scores", scores.astype(np.float32))
        return InferenceResponse(model_name=self.name, id=payload.id, outputs=[output])
