"""Wrappers that mimic APIs which return only part of the model's output.

Many hosted classifiers return the top-k labels with their probabilities, or only the top label.
These wrappers turn a full backend into such an API while keeping the (N, K) probability rows the
rest of the library expects: labels the API does not report share the probability mass it leaves.
"""

from __future__ import annotations

import numpy as np

from backends.base import PROBABILITY_FLOOR, Backend, BackendWrapper
from backends.errors import ConfigurationError

FLOOR = PROBABILITY_FLOOR


def top_k_scores(scores: np.ndarray, k: int) -> np.ndarray:
    """Keep each row's ``k`` largest probabilities; every other label gets the same floor.

    The floor is ``(1 - sum of the top k) / (K - k)``, clipped to at least ``1e-12``, so rows still
    sum to 1 (up to ``(K - k) * 1e-12`` where the clip applies). It never exceeds the k-th largest
    probability, so the order of the top k is kept. Ties are broken toward the lower label index.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n, num_labels = scores.shape
    if not 1 <= k <= num_labels:
        raise ConfigurationError(f"k must be between 1 and the number of labels ({num_labels}), got {k}")
    if k == num_labels:
        return scores.copy()
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    kept = np.take_along_axis(scores, top, axis=1)
    floor = np.maximum((1.0 - kept.sum(axis=1)) / (num_labels - k), FLOOR)
    out = np.repeat(floor[:, None], num_labels, axis=1)
    np.put_along_axis(out, top, kept, axis=1)
    return out


def label_only_scores(scores: np.ndarray, smoothing: float = 1e-6) -> np.ndarray:
    """A one-hot row for each row's top label, smoothed: ``(onehot + smoothing) / (1 + K * smoothing)``."""
    scores = np.asarray(scores, dtype=np.float64)
    n, num_labels = scores.shape
    out = np.full((n, num_labels), smoothing / (1.0 + num_labels * smoothing))
    out[np.arange(n), scores.argmax(axis=1)] = (1.0 + smoothing) / (1.0 + num_labels * smoothing)
    return out


class TopKBackend(BackendWrapper):
    """An API that reports only the top ``k`` labels' probabilities (see :func:`top_k_scores`)."""

    def __init__(self, inner: Backend, k: int):
        super().__init__(inner)
        if not 1 <= k <= self.num_labels:
            raise ConfigurationError(f"k must be between 1 and the number of labels ({self.num_labels}), got {k}")
        self.k = k

    def query(self, images: np.ndarray) -> np.ndarray:
        return top_k_scores(self.inner.query(images), self.k)


class LabelOnlyBackend(BackendWrapper):
    """An API that reports only the top label (see :func:`label_only_scores`).

    ``smoothing`` (default 1e-6) keeps every probability positive so log-based losses stay finite.
    """

    def __init__(self, inner: Backend, smoothing: float = 1e-6):
        super().__init__(inner)
        if not smoothing >= 0.0:
            raise ConfigurationError(f"smoothing must be >= 0, got {smoothing}")
        self.smoothing = smoothing

    def query(self, images: np.ndarray) -> np.ndarray:
        return label_only_scores(self.inner.query(images), self.smoothing)
