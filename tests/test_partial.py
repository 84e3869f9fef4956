import numpy as np
import pytest

from backends.partial import LabelOnlyBackend, TopKBackend, label_only_scores, top_k_scores


def test_top_k_keeps_the_top_values_and_their_order(toy, rng):
    batch = rng.integers(0, 256, size=(12, 16, 16, 3), dtype=np.uint8)
    full = toy.query(batch)
    k = 3
    partial = TopKBackend(toy, k).query(batch)
    assert partial.shape == full.shape
    np.testing.assert_allclose(partial.sum(axis=1), 1.0, atol=1e-12)
    top = np.argsort(-full, axis=1)[:, :k]
    np.testing.assert_array_equal(np.argsort(-partial, axis=1)[:, :k], top)
    np.testing.assert_array_equal(np.take_along_axis(partial, top, 1), np.take_along_axis(full, top, 1))
    floor = (1 - np.take_along_axis(full, top, 1).sum(axis=1)) / (full.shape[1] - k)
    rest = np.ones_like(full, dtype=bool)
    np.put_along_axis(rest, top, False, axis=1)
    np.testing.assert_array_equal(partial[rest].reshape(len(full), -1), np.repeat(floor[:, None], 17, axis=1))


def test_top_k_floor_values_exact():
    scores = np.array([[0.5, 0.2, 0.1, 0.1, 0.1], [0.0, 0.25, 0.75, 0.0, 0.0]])
    out = top_k_scores(scores, 2)
    np.testing.assert_allclose(out[0], [0.5, 0.2, 0.1, 0.1, 0.1])
    assert out[1].tolist() == [1e-12, 0.25, 0.75, 1e-12, 1e-12]  # nothing left: clipped to 1e-12
    out = top_k_scores(np.array([[0.1, 0.6, 0.3, 0.0]]), 1)
    np.testing.assert_allclose(out, [[0.4 / 3, 0.6, 0.4 / 3, 0.4 / 3]], rtol=1e-15)
    np.testing.assert_array_equal(top_k_scores(scores, 5), scores)
    with pytest.raises(ValueError):
        top_k_scores(scores, 0)
    with pytest.raises(ValueError):
        top_k_scores(scores, 6)


def test_label_only_is_smoothed_one_hot(toy, rng):
    batch = rng.integers(0, 256, size=(7, 16, 16, 3), dtype=np.uint8)
    full = toy.query(batch)
    out = LabelOnlyBackend(toy).query(batch)
    K = toy.num_labels
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-15)
    assert out.argmax(axis=1).tolist() == full.argmax(axis=1).tolist()
    low = 1e-6 / (1 + K * 1e-6)
    high = (1 + 1e-6) / (1 + K * 1e-6)
    assert np.all(out[np.arange(7), full.argmax(axis=1)] == high)
    assert np.sum(out == low) == 7 * (K - 1)
    np.testing.assert_array_equal(label_only_scores(np.array([[0.2, 0.7, 0.1]]), 0.0), [[0.0, 1.0, 0.0]])


def test_wrappers_validate_and_pass_attributes(toy):
    with pytest.raises(ValueError):
        TopKBackend(toy, 21)
    with pytest.raises(ValueError):
        LabelOnlyBackend(toy, smoothing=-1.0)
    wrapped = TopKBackend(LabelOnlyBackend(toy), 5)
    assert wrapped.labels == toy.labels and wrapped.image_size == toy.image_size and wrapped.unwrap() is toy
