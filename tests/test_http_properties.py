"""Property tests (hypothesis) for every wire format, both ways.

Requests: any batch the client encodes reaches the model behind the reference server as the same
pixels (bbvp, oip-v2 BYTES and UINT8, hf-image-classification, hf-zero-shot, through the real app
in-process); for the formats the reference server does not speak (kserve-v1, torchserve), the image
fields the protocol defines decode with the server's own image decoder to the same pixels.

Answers: any scores the server sends decode on the client to the same scores: exactly for float64
JSON (bbvp, kserve-v1 lists), to FP32 for oip-v2, and, for the formats that name their labels, to the
same scores renormalized to sum to 1 (what the client documents for keyed answers).
"""

import base64

import httpx
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from backends.base import Backend
from backends.http import HTTPBackend
from backends.http.codecs import FORMATS, Call
from backends.http.server import create_app
from backends.http.serving import decode_image

SETTINGS = settings(max_examples=100, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class Recorder(Backend):
    """A model that records the images it is given and answers the next rows of ``answer``."""

    def __init__(self, labels: list[str], image_size: tuple[int, int], answer: np.ndarray):
        self.labels = labels
        self.image_size = image_size
        self.max_batch = 64
        self.received: list[np.ndarray] = []
        self.answer = answer

    def query(self, images: np.ndarray) -> np.ndarray:
        start = sum(len(batch) for batch in self.received)
        self.received.append(images.copy())
        return self.answer[start : start + len(images)]

    def _query_batch(self, images: np.ndarray) -> np.ndarray:
        raise AssertionError("query is overridden")


@st.composite
def cases(draw, probabilities: bool, max_images: int = 4):
    """(labels, images, scores): distinct labels, a batch of uint8 images, one score row per image."""
    labels = draw(st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=6, unique=True))
    height, width = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    count = draw(st.integers(1, max_images))
    images = draw(hnp.arrays(np.uint8, (count, height, width, 3)))
    if probabilities:  # positive rows, as the keyed formats renormalize
        elements = st.floats(1e-6, 1.0)
    else:  # any finite non-negative float64, subnormals and huge values included
        elements = st.floats(0.0, 1e300, allow_subnormal=True)
    scores = draw(hnp.arrays(np.float64, (count, len(labels)), elements=elements))
    return labels, images, scores


def through_the_server(format: str, path: str, labels, images, scores, **options):
    """Query the reference server's app (in-process, over ASGI) with ``format``; (client scores, model's images)."""
    model = Recorder(labels, images.shape[1:3], scores)
    app = create_app(model, "m")
    extra = {} if format in ("bbvp", "oip-v2") else {"labels": labels, "image_size": images.shape[1:3]}
    # One request at a time, so that the model sees one-image formats' requests in order.
    client = HTTPBackend("http://server.test" + path, format, transport=httpx.ASGITransport(app=app), concurrency=1,
                         scores="probabilities", **extra)  # any scores, as they come: what is sent comes back
    try:
        if options.get("uint8"):
            client.codec.datatype = "UINT8"  # as a server whose metadata asks for a UINT8 tensor
        decoded = client.query(images)
    finally:
        client.close()
    return decoded, np.concatenate(model.received)


def renormalized(scores: np.ndarray) -> np.ndarray:
    return scores / scores.sum(axis=1, keepdims=True)


@SETTINGS
@given(case=cases(probabilities=False))
def test_bbvp_round_trips_pixels_and_float64_scores_exactly(case):
    labels, images, scores = case
    decoded, received = through_the_server("bbvp", "", labels, images, scores)
    np.testing.assert_array_equal(received, images)
    np.testing.assert_array_equal(decoded, scores)


@SETTINGS
@given(case=cases(probabilities=True), uint8=st.booleans())
def test_oip_v2_round_trips_pixels_exactly_and_scores_to_fp32(case, uint8):
    labels, images, scores = case
    decoded, received = through_the_server("oip-v2", "", labels, images, scores, uint8=uint8)
    np.testing.assert_array_equal(received, images)
    np.testing.assert_array_equal(decoded, scores.astype(np.float32).astype(np.float64))


@SETTINGS
@given(case=cases(probabilities=True, max_images=2))
def test_hf_image_classification_round_trips_pixels_and_scores(case):
    labels, images, scores = case
    decoded, received = through_the_server("hf-image-classification", "/hf/models/m", labels, images, scores)
    np.testing.assert_array_equal(received, images)
    np.testing.assert_allclose(decoded, renormalized(scores), rtol=1e-12)


@SETTINGS
@given(case=cases(probabilities=True, max_images=2))
def test_hf_zero_shot_round_trips_pixels_and_scores(case):
    labels, images, scores = case
    decoded, received = through_the_server("hf-zero-shot", "/hf/models/m", labels, images, scores)
    np.testing.assert_array_equal(received, images)
    np.testing.assert_allclose(decoded, renormalized(scores), rtol=1e-12)


def server_decode(data: bytes, images: np.ndarray) -> np.ndarray:
    return decode_image(data, 0, images.shape[1:3], max_pixels=10**6)


@SETTINGS
@given(case=cases(probabilities=True), keyed=st.booleans())
def test_kserve_v1_requests_decode_to_the_pixels_and_answers_to_the_scores(case, keyed):
    import base64

    labels, images, scores = case
    codec = FORMATS.get("kserve-v1")("http://server.test/v1/models/m")
    call = codec.encode(images, labels)
    assert isinstance(call, Call) and call.url == "http://server.test/v1/models/m:predict"
    instances = call.json["instances"]
    pixels = np.stack([server_decode(base64.b64decode(item["image"]["b64"]), images) for item in instances])
    np.testing.assert_array_equal(pixels, images)
    if keyed:  # {label: score} per prediction
        answer = {"predictions": [dict(zip(labels, row.tolist())) for row in scores]}
        np.testing.assert_allclose(codec.decode(answer, len(images), labels), renormalized(scores), rtol=1e-12)
    else:  # K numbers per prediction, as sent
        answer = {"predictions": scores.tolist()}
        np.testing.assert_array_equal(codec.decode(answer, len(images), labels), scores)


@SETTINGS
@given(case=cases(probabilities=True, max_images=1))
def test_torchserve_requests_decode_to_the_pixels_and_answers_to_the_scores(case):
    labels, images, scores = case
    codec = FORMATS.get("torchserve")("http://server.test/predictions/m")
    call = codec.encode(images, labels)
    assert call.headers["Content-Type"] == "image/png" and call.json is None
    np.testing.assert_array_equal(server_decode(call.content, images)[None], images)
    answer = dict(zip(labels, scores[0].tolist()))  # a handler that reports every label
    np.testing.assert_allclose(codec.decode(answer, 1, labels), renormalized(scores), rtol=1e-12)


@SETTINGS
@given(case=cases(probabilities=True, max_images=1))
def test_openai_chat_requests_decode_to_the_pixels_and_top_logprobs_to_the_scores(case):
    """Class names that no other begins with (made so here), every one answered as a token with its log-probability:
    the scores come back renormalized; the image comes back from its data URL pixel for pixel."""
    _, images, scores = case
    labels = [f"c{i}-" for i in range(scores.shape[1])]
    codec = FORMATS.get("openai-chat")("http://server.test")
    codec.model = "m"
    call = codec.encode(images, labels)
    url = call.json["messages"][0]["content"][1]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,") and call.url == "http://server.test/v1/chat/completions"
    np.testing.assert_array_equal(server_decode(base64.b64decode(url.split(",", 1)[1]), images)[None], images)
    top = [{"token": label.upper(), "logprob": float(np.log(p))} for label, p in zip(labels, renormalized(scores)[0])]
    answer = {"choices": [{"logprobs": {"content": [{"token": top[0]["token"], "logprob": 0.0, "top_logprobs": top}]}}]}
    np.testing.assert_allclose(codec.decode(answer, 1, labels), renormalized(scores), rtol=1e-9)


def test_every_format_has_a_round_trip_property_here():
    covered = {"bbvp", "oip-v2", "hf-image-classification", "hf-zero-shot", "kserve-v1", "torchserve", "openai-chat"}
    assert set(FORMATS.names()) == covered
