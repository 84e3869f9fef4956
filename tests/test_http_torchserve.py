"""TorchServe as it ships, against an httpx.MockTransport server of its documented behaviour: token
authorization on by default (key_file.json; a bad key is a 400 InvalidKeyException), the stock image
classifier's top-5 answers, and the standard ImageNet label list, which repeats 'crane' and 'maillot'."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from backends.base import BackendError
from backends.http import HTTPBackend, PartialAnswerWarning

URL = "http://torchserve.test:8080/predictions/m"
KEY = "zq3Vf8Kx"
LABELS = ["tench", "crane", "goldfish", "maillot", "crane", "maillot", "shark"]  # names repeat, as ImageNet's do


def torchserve(answer: dict[str, float], seen: list[dict]):
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(dict(request.headers))
        if request.headers.get("authorization") != f"Bearer {KEY}":
            return httpx.Response(400, json={"code": 400, "type": "InvalidKeyException",
                                             "message": "Token Authorization failed. Token either incorrect, expired, "
                                                        "or not provided correctly"})
        return httpx.Response(200, json=answer)

    return httpx.MockTransport(handle)


def key_file(tmp_path, content: object) -> str:
    path = tmp_path / "key_file.json"
    path.write_text(json.dumps(content), encoding="utf-8")
    return str(path)


KEYS = {"management": {"key": "mgmt-1", "expiration time": "2026-12-02T05:00:00Z"},
        "inference": {"key": KEY, "expiration time": "2026-12-02T05:00:00Z"}, "API": {"key": "api-1"}}


@pytest.fixture
def images(rng) -> np.ndarray:
    return rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)


def test_the_inference_key_of_key_file_json_is_the_token_and_never_shown(tmp_path, images):
    seen: list[dict] = []
    model = HTTPBackend(URL, "torchserve", labels=LABELS, image_size=(16, 16),
                        torchserve_key_file=key_file(tmp_path, KEYS), transport=torchserve(dict(zip(LABELS[:7:3], [
                            0.5, 0.3, 0.2])), seen))
    try:
        with pytest.warns(PartialAnswerWarning, match=r"only 3 of its 7 labels; .* 0\.356 against 0\.875"):
            model.query(images)
        assert seen[0]["authorization"] == f"Bearer {KEY}" and KEY not in repr(model) + str(model.stats())
    finally:
        model.close()


def test_a_missing_key_gets_torchserves_400_and_the_fix_is_named(images):
    model = HTTPBackend(URL, "torchserve", labels=LABELS, image_size=(16, 16), transport=torchserve({}, []))
    try:
        with pytest.raises(BackendError, match=r"answered 400 .*InvalidKeyException.*--torchserve-key-file"):
            model.query(images[:1])
    finally:
        model.close()


@pytest.mark.parametrize("content, match", [({"management": {"key": "m"}}, "no 'inference' -> 'key' field"),
                                            ("not json", "cannot be read as JSON")])
def test_a_bad_key_file_is_refused_naming_it_and_never_showing_a_key(tmp_path, content, match):
    path = tmp_path / "key_file.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    with pytest.raises(ValueError, match=f"TorchServe key file {path} .*{match}") as error:
        HTTPBackend(URL, "torchserve", labels=LABELS, torchserve_key_file=str(path), transport=torchserve({}, []))
    assert "mgmt" not in str(error.value)
    with pytest.raises(ValueError, match="give the token in one place"):
        HTTPBackend(URL, "torchserve", labels=LABELS, torchserve_key_file=str(path), token_env="X",
                    transport=torchserve({}, []))


def test_repeated_label_names_are_taken_and_their_score_goes_to_the_first(tmp_path, images, caplog):
    answer = {"crane": 0.6, "maillot": 0.25, "tench": 0.1, "goldfish": 0.03, "shark": 0.02}  # a top-5 answer
    model = HTTPBackend(URL, "torchserve", labels=LABELS, image_size=(16, 16),
                        torchserve_key_file=key_file(tmp_path, KEYS), transport=torchserve(answer, []))
    assert "the labels 'crane', 'maillot' appear more than once" in caplog.text
    try:
        with pytest.warns(PartialAnswerWarning):
            row = model.query(images[:1])[0]
    finally:
        model.close()
    assert row[1] == pytest.approx(0.6) and row[3] == pytest.approx(0.25)  # the first 'crane' and 'maillot'
    assert row[4] == row[5] == pytest.approx(1e-12) and row.sum() == pytest.approx(1)  # the later ones: left out
