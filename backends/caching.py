"""A wrapper that serves images it has already scored from memory instead of sending them again.

Put the budget *below* the cache, so that answers served from memory cost nothing::

    backend = CachingBackend(CountingBackend(model, budget))

The counter then counts exactly the images that reached the model. (The other order,
``CountingBackend(CachingBackend(model))``, would charge every image asked for, cached or not.)
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np

from backends.base import Backend, BackendWrapper, check_images
from backends.errors import ConfigurationError

DEFAULT_MAX_ENTRIES = 20_000
"""Default cache size in images. One entry holds K float64 scores (8 kB for K = 1000 labels), so the
default bounds the cache at about 160 MB for an ImageNet-sized model and 1.6 MB for K = 10."""


def image_key(image: np.ndarray) -> bytes:
    """A 128-bit BLAKE2b digest of one image's shape and bytes (uint8, H x W x 3)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(np.asarray(image.shape, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(image).data)
    return digest.digest()


class CachingBackend(BackendWrapper):
    """Answers repeated images from an LRU cache and sends each distinct image of a call only once.

    ``max_entries`` bounds the number of cached images (least recently used evicted first);
    ``0`` keeps nothing between calls but still sends duplicates within a call once.

    Counters: ``hits`` are images answered without being sent (found in the cache, or a duplicate
    of an image earlier in the same call); ``misses`` are images sent to ``inner``. For every call,
    ``hits + misses`` grows by the number of images asked for. A call whose inner query fails
    (e.g. :class:`~backends.counting.BudgetExhausted`) changes neither the counters nor the cache.
    """

    def __init__(self, inner: Backend, max_entries: int = DEFAULT_MAX_ENTRIES):
        super().__init__(inner)
        if max_entries < 0:
            raise ConfigurationError(f"max_entries must be >= 0, got {max_entries}")
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._cache: OrderedDict[bytes, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        """Images currently cached."""
        return len(self._cache)

    @property
    def requests(self) -> int:
        """Images asked for so far (``hits + misses``)."""
        return self.hits + self.misses

    def clear(self) -> None:
        """Forget every cached image (the counters stay)."""
        self._cache.clear()

    def query(self, images: np.ndarray) -> np.ndarray:
        images = check_images(images)
        keys = [image_key(image) for image in images]
        found: dict[int, np.ndarray] = {}
        to_send: dict[bytes, int] = {}  # distinct missing key -> its first index in this call
        for i, key in enumerate(keys):
            row = self._cache.get(key)
            if row is not None:
                found[i] = row
            elif key not in to_send:
                to_send[key] = i
        sent_index = list(to_send.values())
        fresh = (self.inner.query(images[sent_index]) if sent_index
                 else np.zeros((0, self.num_labels)))
        fresh_rows = {key: fresh[j] for j, key in enumerate(to_send)}

        scores = np.empty((len(images), self.num_labels), dtype=np.float64)
        for i, key in enumerate(keys):
            scores[i] = found[i] if i in found else fresh_rows[key]
        for key in dict.fromkeys(keys):  # in first-use order: refresh hits, then store new rows
            if key in self._cache:
                self._cache.move_to_end(key)
            elif self.max_entries > 0:
                self._cache[key] = np.array(fresh_rows[key], dtype=np.float64, copy=True)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        self.misses += len(sent_index)
        self.hits += len(images) - len(sent_index)
        return scores
