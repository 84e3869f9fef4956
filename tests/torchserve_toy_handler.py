"""A TorchServe handler that serves backends.toy.ToyBackend (archived by test_torchserve.py).

TorchServe calls ``handle(None, context)`` once when the worker loads the model, then
``handle(rows, context)`` per batch: one row per request, ``{parameter name: raw bytes}`` (a raw
``POST /predictions/MODEL`` body is the parameter "body"). The answer is a list with one
``{label: probability}`` per request, made the way TorchServe's stock image_classifier does
(``torch.topk`` then ``ts.utils.util.map_class_to_label`` with index_to_name.json), for the ``topk``
of the model-config's ``handler`` section: 5 like the stock handler, or every label.

For each image scored it appends "PARAMETER CONTENT-TYPE" as a line to the ``seen`` file of that
section, so the test can count what the server scored and see how the request arrived.
"""

import io
import json
import os
import sys

import numpy as np
import torch
from PIL import Image
from ts.utils.util import map_class_to_label

_model = {}


def _initialize(context):
    settings = context.model_yaml_config["handler"]
    sys.path.insert(0, settings["repo"])  # the project, for backends.toy
    from backends.toy import ToyBackend

    with open(os.path.join(context.system_properties["model_dir"], "index_to_name.json"), encoding="utf-8") as f:
        mapping = json.load(f)
    _model.update(toy=ToyBackend(), topk=int(settings["topk"]), seen=settings["seen"], mapping=mapping)


def handle(data, context):
    if not _model:
        _initialize(context)
    if data is None:  # the load-time call
        return None
    images, seen = [], []
    for index, row in enumerate(data):
        name, body = next((key, row[key]) for key in ("data", "body") if row.get(key) is not None)
        content_type = context.request_processor[index].get_request_property(name).get("content-type")
        images.append(np.asarray(Image.open(io.BytesIO(body)).convert("RGB")))
        seen.append(f"{name} {content_type}\n")
    probabilities = torch.from_numpy(_model["toy"].query(np.stack(images)))  # float64, as the local toy's
    top, classes = torch.topk(probabilities, _model["topk"], dim=1)
    answers = map_class_to_label(top.tolist(), _model["mapping"], classes.tolist())
    with open(_model["seen"], "a", encoding="utf-8") as f:
        f.write("".join(seen))
    return answers
