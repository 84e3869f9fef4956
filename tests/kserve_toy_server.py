"""Serves backends.toy.ToyBackend as model "toy" from KServe's own ModelServer (used by test_kserve.py).

Usage: python tests/kserve_toy_server.py HTTP_PORT COUNT_FILE. Answers OIP V2 with a BYTES input of
base64 PNGs and an FP32 [N, 20] output; no label parameters, so the client names labels "0".."19".
After each infer it writes the number of images scored so far to COUNT_FILE.
"""

import base64
import io
import os
import sys

port, count_file = int(sys.argv[1]), sys.argv[2]
sys.argv = sys.argv[:1]  # kserve's module-level argument parser reads sys.argv
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import kserve  # noqa: E402
import numpy as np  # noqa: E402
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse  # noqa: E402
from PIL import Image  # noqa: E402

from backends.toy import ToyBackend  # noqa: E402


class ToyModel(kserve.Model):
    def __init__(self):
        super().__init__("toy")
        self.toy = ToyBackend()
        self.images = 0
        self.ready = True

    def get_input_types(self):
        return [{"name": "image", "datatype": "BYTES", "shape": [-1]}]

    def get_output_types(self):
        return [{"name": "scores", "datatype": "FP32", "shape": [-1, len(self.toy.labels)]}]

    def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        data = payload.inputs[0].data
        images = np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(item))).convert("RGB"))
                           for item in data])
        scores = self.toy.query(images).astype(np.float32)
        self.images += len(images)
        with open(count_file + ".tmp", "w") as handle:
            handle.write(str(self.images))
        os.replace(count_file + ".tmp", count_file)
        output = InferOutput("scores", list(scores.shape), "FP32", scores.reshape(-1).tolist())
        return InferResponse(model_name="toy", infer_outputs=[output], response_id=payload.id or "toy")


if __name__ == "__main__":
    kserve.ModelServer(http_port=port, enable_grpc=False, workers=1).start([ToyModel()])
