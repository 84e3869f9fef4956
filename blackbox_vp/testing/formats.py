"""What every wire format must do (:data:`backends.http.codecs.FORMATS`): its client codec and the server's routes
of it (``backends/http/protocols/``) agree, so a run through them scores what the model scores.

The client talks to ``bbvp serve``'s app in memory (``httpx.ASGITransport``), serving a toy model.
"""

from __future__ import annotations

import warnings

import httpx
import numpy as np
import pytest

from backends.http import HTTPBackend, PartialAnswerWarning
from backends.http.server import Limits, create_app
from backends.toy import ToyBackend

MODEL = "toy"


class FormatContract:
    """Set ``name`` (a registered format) and ``path``, what follows the server's address in the URL a client
    of that format is given (``/predictions/toy``); ``top`` for a format whose answers name only the top labels."""

    name: str
    path = ""
    top: int | None = None

    @pytest.fixture
    def served(self):
        """(the model served, a client of the format talking to it); the client is closed afterwards."""
        model = ToyBackend()
        app = create_app(model, MODEL, Limits(max_batch=8))
        client = HTTPBackend(f"http://bbvp.test{self.path}", self.name, labels=model.labels, image_size=(64, 64),
                             transport=httpx.ASGITransport(app=app))
        yield model, client
        client.close()

    def images(self, count: int) -> np.ndarray:
        return np.random.default_rng(0).integers(0, 256, (count, 64, 64, 3), dtype=np.uint8)

    def test_the_client_gets_the_models_scores(self, served):
        model, client = served
        images = self.images(10)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PartialAnswerWarning)  # a top-k format says so once
            scores = client.query(images)
        expected = model.query(images)
        if self.top is None:
            np.testing.assert_allclose(scores, expected, rtol=1e-6, atol=1e-9)  # FP32 on the wire for some formats
            return
        top = np.argsort(-expected, axis=1)[:, : self.top]
        np.testing.assert_allclose(np.take_along_axis(scores, top, 1), np.take_along_axis(expected, top, 1), rtol=1e-6)

    def test_every_image_is_answered_once_in_order(self, served):
        model, client = served
        images = self.images(12)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PartialAnswerWarning)
            scores = client.query(images)
        assert scores.shape == (12, model.num_labels)
        assert client.stats()["images"] == 12
        np.testing.assert_array_equal(scores.argmax(axis=1), model.query(images).argmax(axis=1))
