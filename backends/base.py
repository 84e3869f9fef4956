"""The one interface every model backend implements.

A backend takes exactly what would go over the wire, uint8 RGB images of shape (N, H, W, 3),
and returns an (N, K) float array of probabilities over its ``labels`` (K names).
Wrappers (counting, caching, ...) are backends themselves, so they compose.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from backends.errors import BackendError, ConfigurationError

PROBABILITY_FLOOR = 1e-12  # the least probability a computation takes (a log of 0, a label a partial answer left out)


class Backend(ABC):
    """A queryable image classifier.

    Subclasses set ``labels`` (the K output names), ``max_batch`` (largest batch one call may carry)
    and ``image_size`` (the (H, W) they expect), and implement :meth:`_query_batch`.
    :meth:`query` validates the images, splits them into batches of at most ``max_batch`` and
    checks what comes back.
    """

    labels: Sequence[str]
    max_batch: int = 64
    image_size: tuple[int, int] = (224, 224)

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def query(self, images: np.ndarray) -> np.ndarray:
        """Score ``images`` (uint8, N x H x W x 3); returns (N, K) float64 probabilities."""
        images = check_images(images)
        if len(images) == 0:
            return np.zeros((0, self.num_labels))
        parts = [
            self._query_batch(images[start : start + self.max_batch])
            for start in range(0, len(images), self.max_batch)
        ]
        scores = np.concatenate(parts, axis=0).astype(np.float64, copy=False)
        return check_scores(scores, len(images), self.num_labels, source=type(self).__name__)

    @abstractmethod
    def _query_batch(self, images: np.ndarray) -> np.ndarray:
        """Score one batch of at most ``max_batch`` images."""

    def close(self) -> None:  # noqa: B027 (a backend without resources need not override it)
        """Release resources (connections, threads). Safe to call twice."""

    reports_traffic: ClassVar[bool] = False
    """Whether :meth:`stats` reports traffic: a remote backend's."""

    def stats(self) -> dict | None:
        """What a remote backend reports of its traffic (requests, retries, images answered, cost); None here."""
        return None


class BackendWrapper(Backend):
    """A backend that forwards to an inner backend: the base of counting, caching, ... wrappers."""

    def __init__(self, inner: Backend):
        self.inner = inner
        self.labels = inner.labels
        self.max_batch = inner.max_batch
        self.image_size = inner.image_size

    def query(self, images: np.ndarray) -> np.ndarray:
        return self.inner.query(images)

    def _query_batch(self, images: np.ndarray) -> np.ndarray:
        return self.inner.query(images)

    def close(self) -> None:
        self.inner.close()

    def unwrap(self) -> Backend:
        """The innermost backend (the model itself) below every wrapper."""
        backend: Backend = self
        while isinstance(backend, BackendWrapper):
            backend = backend.inner
        return backend


def pixel_size(value: Sequence[int]) -> tuple[int, int]:
    """(H, W) as two ints, from any pair (a list read from JSON, a tuple, an array's shape)."""
    height, width = value
    return int(height), int(width)


def check_images(images: np.ndarray) -> np.ndarray:
    """Refuse anything that is not a uint8 (N, H, W, 3) array."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"images must be uint8 (what goes over the wire), got {images.dtype}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ConfigurationError(f"images must have shape (N, H, W, 3), got {images.shape}")
    return images


def check_scores(scores: np.ndarray, count: int, num_labels: int, source: str) -> np.ndarray:
    """Refuse scores of the wrong shape, with NaN, negative or unnormalizable values."""
    if scores.shape != (count, num_labels):
        raise BackendError(f"{source} returned scores of shape {scores.shape}, expected {(count, num_labels)}")
    if not np.all(np.isfinite(scores)):
        raise BackendError(f"{source} returned NaN or infinite scores")
    if np.any(scores < 0):
        raise BackendError(f"{source} returned negative scores; probabilities were expected")
    return scores
