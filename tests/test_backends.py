import numpy as np
import pytest

from backends import BACKENDS, BudgetExhausted, CountingBackend, make_backend
from backends.base import BackendError, check_scores
from backends.toy import ToyBackend


def test_toy_returns_probabilities_and_is_deterministic(toy, rng):
    images = rng.integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    scores = toy.query(images)
    assert scores.shape == (5, 20)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0)
    np.testing.assert_array_equal(scores, ToyBackend().query(images))


def test_a_toy_images_scores_do_not_depend_on_the_images_sent_with_it(toy, rng):
    images = rng.integers(0, 256, (300, 64, 64, 3), dtype=np.uint8)
    scores = toy.query(images)
    for size in (1, 2, 3, 7, 64, 255):
        parts = [toy.query(images[start : start + size]) for start in range(0, len(images), size)]
        np.testing.assert_array_equal(np.concatenate(parts), scores)  # bit for bit


def test_batches_larger_than_max_batch_are_split(rng):
    calls = []

    class Recording(ToyBackend):
        def _query_batch(self, images):
            calls.append(len(images))
            return super()._query_batch(images)

    backend = Recording(max_batch=4)
    images = rng.integers(0, 256, (10, 64, 64, 3), dtype=np.uint8)
    scores = backend.query(images)
    assert calls == [4, 4, 2]
    np.testing.assert_allclose(scores, ToyBackend().query(images))


def test_query_refuses_non_uint8_and_bad_shapes(toy):
    with pytest.raises(TypeError, match="uint8"):
        toy.query(np.zeros((1, 64, 64, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        toy.query(np.zeros((64, 64, 3), dtype=np.uint8))


def test_scores_with_nan_negative_or_wrong_shape_are_refused():
    with pytest.raises(BackendError, match="NaN"):
        check_scores(np.array([[np.nan, 1.0]]), 1, 2, "x")
    with pytest.raises(BackendError, match="negative"):
        check_scores(np.array([[-0.1, 1.1]]), 1, 2, "x")
    with pytest.raises(BackendError, match="shape"):
        check_scores(np.ones((2, 3)), 1, 3, "x")


def test_budget_refuses_before_sending_exactly_at_the_limit(toy, rng):
    sent = []

    class Recording(ToyBackend):
        def _query_batch(self, images):
            sent.append(len(images))
            return super()._query_batch(images)

    counter = CountingBackend(Recording(), budget=10)
    images = rng.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    counter.query(images)
    counter.query(images[:4])  # exactly at the limit: allowed
    assert counter.images_sent == 10 and counter.calls == 2 and counter.remaining == 0
    with pytest.raises(BudgetExhausted, match="10 of the budget of 10"):
        counter.query(images[:1])
    assert sum(sent) == 10  # the refused call sent nothing
    assert counter.images_sent == 10 and counter.calls == 2


def test_counting_wrapper_is_a_backend_and_composes(toy, rng):
    inner = CountingBackend(toy)
    outer = CountingBackend(inner, budget=100)
    images = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    np.testing.assert_allclose(outer.query(images), toy.query(images))
    assert inner.images_sent == outer.images_sent == 3
    assert outer.unwrap() is toy
    assert outer.labels == toy.labels


def test_unknown_backend_names_the_known_ones():
    with pytest.raises(ValueError, match="reference"):
        make_backend("nope")
    assert {"reference", "surrogate", "toy"} <= set(BACKENDS.names())


@pytest.mark.slow
def test_reference_calls_the_sample_flower_a_daisy(reference):
    from PIL import Image
    from sklearn.datasets import load_sample_image

    flower = np.asarray(Image.fromarray(load_sample_image("flower.jpg")).resize((224, 224), Image.BILINEAR))
    scores = reference.query(flower[None])
    assert reference.labels[int(scores.argmax())] == "daisy"
    assert len(reference.labels) == 1000
    assert scores[0].max() > 0.1


def test_reference_top5_answers_the_references_five_best_labels_and_floors_the_rest(reference):
    from backends import make_backend

    image = np.random.default_rng(0).integers(0, 256, size=(1, 224, 224, 3), dtype=np.uint8)
    full, top5 = reference.query(image)[0], make_backend("reference-top5").query(image)[0]
    best = np.argsort(-full)[:5]
    assert np.allclose(top5[best], full[best]) and len(np.unique(np.delete(top5, best))) == 1
    assert np.isclose(top5.sum(), 1.0)


@pytest.mark.slow
@pytest.mark.parametrize("name, side", [("surrogate", 240), ("surrogate-lite2", 260)])
def test_each_surrogate_is_a_different_model_that_also_sees_a_palace(reference, name, side):
    from PIL import Image
    from sklearn.datasets import load_sample_image

    surrogate = make_backend(name)
    assert surrogate.image_size == (side, side)
    temple = load_sample_image("china.jpg")
    height, width = temple.shape[:2]
    square = temple[:, (width - height) // 2 : (width - height) // 2 + height]
    image = np.asarray(Image.fromarray(square).resize((224, 224), Image.BILINEAR))[None]
    scores, reference_scores = surrogate.query(image), reference.query(image)  # the surrogate resizes it to its side
    assert "palace" in [surrogate.labels[i] for i in np.argsort(-scores[0])[:3]]
    assert reference.labels[int(reference_scores.argmax())] == "palace"
    assert not np.allclose(scores, reference_scores, atol=1e-3)


def test_reference_batches_by_device_16_images_on_a_cpu_256_on_a_gpu():
    from backends.torch_classifier import efficientnet_lite_backend

    assert efficientnet_lite_backend(device="cpu").max_batch == 16
    # the meta device holds no data and stands in for a GPU here: any device that is not the CPU
    assert efficientnet_lite_backend(device="meta").max_batch == 256
    assert efficientnet_lite_backend(device="meta", max_batch=32).max_batch == 32
