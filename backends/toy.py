"""A tiny deterministic backend for millisecond tests of every code path."""

from __future__ import annotations

import numpy as np

from backends.base import Backend
from backends.errors import ConfigurationError


class ToyBackend(Backend):
    """A fixed random linear map from 8x8-pooled pixels to K logits, then softmax.

    Deterministic for a given ``seed``; any input size is average-pooled to 8x8 first, so the
    whole image (prompt border included) moves the scores. An image's scores do not depend on the
    other images of its batch, to the last bit: each row is its own product (a matrix product over the
    batch lets BLAS pick a summation order by the batch's shape), so a cache's "identical to uncached"
    holds on every machine.
    """

    def __init__(self, num_labels: int = 20, seed: int = 0, image_size: tuple[int, int] = (64, 64),
                 max_batch: int = 256):
        rng = np.random.default_rng(seed)
        self.labels = [f"toy-{i}" for i in range(num_labels)]
        self.image_size = image_size
        self.max_batch = max_batch
        self.weights = rng.normal(0.0, 1.0, size=(8 * 8 * 3, num_labels)) / 8.0
        self.bias = rng.normal(0.0, 0.5, size=num_labels)

    def _query_batch(self, images: np.ndarray) -> np.ndarray:
        n, h, w, _ = images.shape
        if h % 8 or w % 8:
            raise ConfigurationError(f"toy backend needs sides divisible by 8, got {h}x{w}")
        x = images.astype(np.float64) / 127.5 - 1.0
        pooled = x.reshape(n, 8, h // 8, 8, w // 8, 3).mean(axis=(2, 4)).reshape(n, -1)
        logits = np.stack([row @ self.weights for row in pooled]) + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        return probs / probs.sum(axis=1, keepdims=True)
