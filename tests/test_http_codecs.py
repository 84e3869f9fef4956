"""The wire-format codecs: requests they build, answers they accept and refuse, label files."""

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from backends.http.codecs import FORMATS, PARTIAL_FLOOR, Call, CodecError, fill_partial, load_labels, png_base64
from backends.http.protocols.hugging_face import HFImageClassificationCodec, HFZeroShotCodec
from backends.http.protocols.kserve_v1 import KServeV1Codec
from backends.http.protocols.oip_v2 import OipV2Codec
from backends.http.protocols.torchserve import TorchServeCodec

LABELS = ["cat", "dog", "fox", "owl"]


@pytest.fixture
def images(rng) -> np.ndarray:
    return rng.integers(0, 256, (3, 16, 24, 3), dtype=np.uint8)


def unpng(text: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(text))) as image:
        return np.asarray(image)


def fake_fetch(answers: dict[tuple[str, str], object]):
    """A discovery fetch answering from a dict; None (a 404) for anything else. Records the calls."""
    asked: list[Call] = []

    def fetch(call: Call):
        asked.append(call)
        return answers.get((call.method, call.url))

    fetch.asked = asked
    return fetch


def test_every_format_is_registered_with_a_description():
    assert FORMATS.names()[0] == "bbvp"  # the default first; the others in the order protocols/ imports them
    assert set(FORMATS.names()) == {"bbvp", "hf-image-classification", "hf-zero-shot", "kserve-v1", "oip-v2",
                                    "openai-chat", "torchserve"}
    for name, description in FORMATS.describe():
        assert FORMATS.get(name).name == name and description


def test_png_round_trip_is_lossless(images):
    np.testing.assert_array_equal(unpng(png_base64(images[0])), images[0])


def test_bbvp_sends_one_request_per_batch_and_reads_metadata(images):
    codec = FORMATS.get("bbvp")("http://h:1/")
    info = codec.discover(fake_fetch({("GET", "http://h:1/bbvp/v1/model"):
                                      {"labels": LABELS, "image_size": [16, 24], "max_batch": 8}}))
    assert (info.labels, info.image_size, info.max_batch) == (LABELS, (16, 24), 8)
    call = codec.encode(images, LABELS)
    assert (call.method, call.url) == ("POST", "http://h:1/bbvp/v1/predict")
    np.testing.assert_array_equal(np.stack([unpng(x) for x in call.json["images"]]), images)
    scores = codec.decode({"scores": np.full((3, 4), 0.25).tolist()}, 3, LABELS)
    assert scores.shape == (3, 4) and scores.dtype == np.float64


def test_bbvp_without_metadata_says_to_pick_a_format():
    with pytest.raises(CodecError, match="--format"):
        FORMATS.get("bbvp")("http://h:1").discover(fake_fetch({}))


def test_oip_finds_the_one_model_and_reads_labels_size_and_datatype(images):
    meta = {"name": "m", "inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [-1, 16, 24, 3]}],
            "outputs": [{"name": "probs", "datatype": "FP32", "shape": [-1, 4]}],
            "parameters": {"labels": LABELS, "max_batch": 32}}
    fetch = fake_fetch({("GET", "http://h:1/v2/models"): {"models": ["m"]}, ("GET", "http://h:1/v2/models/m"): meta})
    codec = OipV2Codec("http://h:1")
    info = codec.discover(fetch)
    assert (info.labels, info.num_labels, info.image_size, info.max_batch) == (LABELS, 4, (16, 24), 32)
    call = codec.encode(images, LABELS)
    assert call.url == "http://h:1/v2/models/m/infer"
    tensor = call.json["inputs"][0]
    assert (tensor["name"], tensor["datatype"], tensor["shape"]) == ("pixels", "UINT8", [3, 16, 24, 3])
    np.testing.assert_array_equal(np.array(tensor["data"], dtype=np.uint8).reshape(images.shape), images)
    answer = {"outputs": [{"name": "other", "datatype": "FP32", "shape": [3], "data": [0, 0, 0]},
                          {"name": "probs", "datatype": "FP32", "shape": [3, 4], "data": [0.25] * 12}]}
    np.testing.assert_allclose(codec.decode(answer, 3, LABELS), 0.25)


def test_oip_defaults_to_base64_png_bytes_and_falls_back_to_the_repository_index(images):
    fetch = fake_fetch({("POST", "http://h:1/v2/repository/index"): [{"name": "m", "state": "READY"}],
                        ("GET", "http://h:1/v2/models/m"): {"name": "m"}})
    codec = OipV2Codec("http://h:1")
    info = codec.discover(fetch)
    assert info.labels is None and info.num_labels is None
    assert [c.url for c in fetch.asked] == ["http://h:1/v2/models", "http://h:1/v2/repository/index",
                                            "http://h:1/v2/models/m", "http://h:1/v2/models/m/config"]
    tensor = codec.encode(images, LABELS).json["inputs"][0]
    assert (tensor["datatype"], tensor["shape"]) == ("BYTES", [3])
    np.testing.assert_array_equal(unpng(tensor["data"][2]), images[2])


def test_oip_with_several_models_asks_for_the_model_url():
    fetch = fake_fetch({("GET", "http://h:1/v2/models"): {"models": ["a", "b"]}})
    with pytest.raises(CodecError, match=r"2 models \(a, b\).*http://h:1/v2/models/MODEL"):
        OipV2Codec("http://h:1").discover(fetch)


def test_oip_model_url_is_used_as_given():
    fetch = fake_fetch({("GET", "http://h:1/v2/models/m"): {"name": "m"}})
    codec = OipV2Codec("http://h:1/v2/models/m")
    codec.discover(fetch)
    assert [c.url for c in fetch.asked] == ["http://h:1/v2/models/m", "http://h:1/v2/models/m/config"]  # Triton's


@pytest.mark.parametrize("output, match", [
    ({"name": "scores", "datatype": "FP32", "shape": [2, 4], "data": [0.25] * 8}, "shape"),
    ({"name": "scores", "datatype": "FP32", "shape": [3, 4], "data": [0.25] * 11}, "expected 3 x 4"),
    ({"name": "scores", "datatype": "BYTES", "shape": [3, 4], "data": ["a"] * 12}, "datatype"),
    ({"name": "scores", "datatype": "FP32", "shape": [3, 4], "data": ["0.25"] * 12}, "non-numbers"),
    ({"name": "scores", "datatype": "FP32", "shape": [3, 4], "data": [[0.25] * 4, [0.25] * 3, [0.25] * 5]},
     "rectangular|non-numbers"),
])
def test_oip_refuses_answers_of_the_wrong_shape_or_type(output, match):
    with pytest.raises(CodecError, match=match):
        OipV2Codec("http://h:1/v2/models/m").decode({"outputs": [output]}, 3, LABELS)


def test_oip_refuses_an_answer_without_outputs():
    with pytest.raises(CodecError, match="outputs"):
        OipV2Codec("http://h:1/v2/models/m").decode({"error": "x"}, 3, LABELS)


def test_kserve_v1_reads_lists_and_keyed_predictions(images):
    codec = KServeV1Codec("http://h:1/v1/models/m")
    assert codec.discover(fake_fetch({})).labels is None
    call = codec.encode(images, LABELS)
    assert call.url == "http://h:1/v1/models/m:predict"
    np.testing.assert_array_equal(unpng(call.json["instances"][1]["image"]["b64"]), images[1])
    scores = codec.decode({"predictions": [[0.1, 0.2, 0.3, 0.4], {"dog": 0.9, "cat": 0.1},
                                           [0.25] * 4]}, 3, LABELS)
    np.testing.assert_allclose(scores[0], [0.1, 0.2, 0.3, 0.4])
    assert scores[1].argmax() == 1 and np.isclose(scores[1].sum(), 1.0)
    with pytest.raises(CodecError, match="3 entries"):
        codec.decode({"predictions": [[0.25] * 4]}, 3, LABELS)


def test_torchserve_sends_raw_png_one_image_and_fills_the_top_5(images):
    codec = TorchServeCodec("http://h:8080/predictions/m")
    assert not codec.batched
    codec.discover(fake_fetch({}))
    call = codec.encode(images[:1], LABELS)
    assert call.headers["Content-Type"] == "image/png" and call.json is None
    with Image.open(io.BytesIO(call.content)) as image:
        np.testing.assert_array_equal(np.asarray(image), images[0])
    scores = codec.decode([{"fox": 0.6, "cat": 0.3}], 1, LABELS)
    assert scores.shape == (1, 4) and np.isclose(scores.sum(), 1.0)
    assert scores[0, 2] > scores[0, 0] > scores[0, 1] == scores[0, 3]


def test_torchserve_url_must_name_the_model():
    with pytest.raises(CodecError, match="predictions/MODEL"):
        TorchServeCodec("http://h:8080").discover(fake_fetch({}))


def test_partial_scores_share_the_missing_mass_capped_and_floored():
    row = fill_partial({"cat": 0.5, "dog": 0.3}, LABELS)  # 0.2 left for 2 labels: 0.1 each
    np.testing.assert_allclose(row, [0.5, 0.3, 0.1, 0.1])
    row = fill_partial({"cat": 0.9, "dog": 0.01}, LABELS)  # 0.045 each would exceed the smallest reported
    np.testing.assert_allclose(row, np.array([0.9, 0.01, 0.01, 0.01]) / 0.93)
    row = fill_partial({"cat": 0.7, "dog": 0.3}, LABELS)  # nothing left: the floor
    np.testing.assert_allclose(row * (1 + 2 * PARTIAL_FLOOR), [0.7, 0.3, PARTIAL_FLOOR, PARTIAL_FLOOR])


@pytest.mark.parametrize("answer, match", [
    ([{"label": "wolf", "score": 0.5}], "'wolf' is not one of the 4 known labels"),
    ([{"label": "cat", "score": 0.5}, {"label": "cat", "score": 0.1}], "appears twice"),
    ([{"label": "cat", "score": float("nan")}], "finite"),
    ([{"label": "cat", "score": -0.1}], ">= 0"),
    ([{"label": "cat", "score": "0.5"}], "not a number"),
    ([{"label": "cat", "score": True}], "not a number"),
    ([{"score": 0.5}], "no string 'label'"),
    ([], "no scores"),
    ({"label": "cat", "score": 0.5}, "not a list"),
])
def test_hf_image_classification_refuses_bad_answers(answer, match):
    with pytest.raises(CodecError, match=match):
        HFImageClassificationCodec("http://h/models/m").decode(answer, 1, LABELS)


def test_hf_image_classification_asks_for_every_label_and_accepts_nested_answers(images):
    codec = HFImageClassificationCodec("http://h/models/m")
    call = codec.encode(images[:1], LABELS)
    assert call.url == "http://h/models/m" and call.json["parameters"] == {"top_k": 4}
    np.testing.assert_array_equal(unpng(call.json["inputs"]), images[0])
    answer = [[{"label": "owl", "score": 0.7}, {"label": "fox", "score": 0.2}]]
    np.testing.assert_allclose(codec.decode(answer, 1, LABELS), [[0.05, 0.05, 0.2, 0.7]])


def test_hf_zero_shot_sends_the_candidates_and_wants_all_of_them_back(images):
    codec = HFZeroShotCodec("http://h/models/clip")
    call = codec.encode(images[:1], LABELS)
    assert call.json["parameters"] == {"candidate_labels": LABELS}
    answer = [{"label": label, "score": 0.25} for label in reversed(LABELS)]
    np.testing.assert_allclose(codec.decode(answer, 1, LABELS), [[0.25] * 4])
    with pytest.raises(CodecError, match=r"missing \['owl'\]"):
        codec.decode(answer[1:], 1, LABELS)


def test_labels_from_text_json_list_and_index_to_name(tmp_path):
    text = tmp_path / "labels.txt"
    text.write_text("cat\n\n dog \nfox\n")
    assert load_labels(text) == ["cat", "dog", "fox"]
    listed = tmp_path / "labels.json"
    listed.write_text(json.dumps(LABELS))
    assert load_labels(listed) == LABELS
    index = tmp_path / "index_to_name.json"
    index.write_text(json.dumps({"1": ["n02", "dog"], "0": ["n01", "cat"], "2": "fox"}))
    assert load_labels(index) == ["cat", "dog", "fox"]


@pytest.mark.parametrize("content, match", [
    ('{"0": "cat", "2": "fox"}', "indices"), ('{"a": "cat"}', "indices"), ("[1, 2]", "list of strings"),
    ("[", "not valid JSON"), ("[]", "no labels"),
])
def test_bad_label_files_are_refused(tmp_path, content, match):
    path = tmp_path / "labels.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        load_labels(path)
