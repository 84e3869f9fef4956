"""What every backend and backend wrapper must do (:class:`backends.base.Backend`)."""

from __future__ import annotations

import numpy as np
import pytest

from backends.base import Backend
from backends.errors import ConfigurationError


class BackendContract:
    """Override :meth:`make_backend`; the suite closes what it builds."""

    def make_backend(self) -> Backend:
        raise NotImplementedError

    def images(self, backend: Backend, count: int, seed: int = 0) -> np.ndarray:
        height, width = backend.image_size
        return np.random.default_rng(seed).integers(0, 256, size=(count, height, width, 3), dtype=np.uint8)

    @pytest.fixture
    def backend(self):
        backend = self.make_backend()
        yield backend
        backend.close()

    def test_it_answers_one_probability_row_per_image(self, backend):
        scores = backend.query(self.images(backend, 5))
        assert scores.shape == (5, backend.num_labels) and scores.dtype == np.float64
        assert np.all(scores >= 0) and np.all(np.isfinite(scores))
        np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-4)

    def test_it_has_named_labels_and_a_batch_limit(self, backend):
        assert backend.num_labels >= 2 and len(set(backend.labels)) == backend.num_labels
        assert backend.max_batch >= 1 and len(backend.image_size) == 2

    def test_no_images_cost_nothing_and_answer_an_empty_array(self, backend):
        assert backend.query(self.images(backend, 0)).shape == (0, backend.num_labels)

    def test_an_image_scores_the_same_alone_and_in_a_batch_larger_than_max_batch(self, backend):
        images = self.images(backend, backend.max_batch + 2 if backend.max_batch < 64 else 3, seed=1)
        together = backend.query(images)
        alone = np.concatenate([backend.query(images[i : i + 1]) for i in (0, len(images) - 1)])
        np.testing.assert_allclose(together[[0, -1]], alone, atol=1e-5)

    def test_images_that_are_not_uint8_rgb_are_refused(self, backend):
        images = self.images(backend, 2)
        with pytest.raises(TypeError, match="uint8"):
            backend.query(images.astype(np.float32))
        with pytest.raises(ConfigurationError, match="shape"):
            backend.query(images[..., :1])

    def test_close_may_be_called_twice(self):
        backend = self.make_backend()
        backend.close()
        backend.close()
