"""What every task (data set) must do (:data:`blackbox_vp.data.TASKS`)."""

from __future__ import annotations

import numpy as np

from blackbox_vp.data import Dataset, load_task

SIZE = (32, 32)


class TaskContract:
    """Set ``name``, a registered task (or a folder path)."""

    name: str

    def load(self, seed: int = 0) -> Dataset:
        return load_task(self.name, SIZE, seed=seed)

    def test_images_are_uint8_rgb_at_the_size_asked(self):
        data = self.load()
        assert data.images.dtype == np.uint8 and data.images.shape[1:] == (*SIZE, 3)
        assert len(data.images) == len(data.labels) == len(data)

    def test_labels_index_named_classes_and_every_class_has_images(self):
        data = self.load()
        assert len(data.classes) >= 2 and len(set(data.classes)) == len(data.classes)
        assert set(np.unique(data.labels)) == set(range(len(data.classes)))

    def test_the_same_seed_gives_the_same_images(self):
        first, second = self.load(seed=1), self.load(seed=1)
        np.testing.assert_array_equal(first.images, second.images)
        np.testing.assert_array_equal(first.labels, second.labels)
