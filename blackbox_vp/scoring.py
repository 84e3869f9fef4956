"""Scoring prompted images through a backend and turning scores into accuracy."""

from __future__ import annotations

import copy

import numpy as np
import torch

from backends.base import Backend
from blackbox_vp.data import Dataset
from blackbox_vp.mappings import OutputMapping
from blackbox_vp.prompts import Prompt


def score(backend: Backend, prompt: Prompt, theta: np.ndarray, images: np.ndarray) -> torch.Tensor:
    """Backend probabilities (N, K) for ``images`` prompted with ``theta``: one query of N images."""
    return torch.from_numpy(backend.query(prompt.apply(theta, images)))


def mapped_accuracy(mapping: OutputMapping, scores: torch.Tensor, labels: np.ndarray) -> float:
    """Accuracy of the classes ``mapping`` picks from backend ``scores``."""
    predicted = mapping.probabilities(scores).argmax(dim=1).numpy()
    return float(np.mean(predicted == labels)) if len(labels) else float("nan")


def correct_count(mapping: OutputMapping, scores: torch.Tensor, labels: np.ndarray) -> int:
    """Images whose class ``mapping`` picks right from backend ``scores``."""
    return int(np.sum(mapping.probabilities(scores).argmax(dim=1).numpy() == labels)) if len(labels) else 0


def cross_validated_correct(mapping: OutputMapping, scores: torch.Tensor, labels: np.ndarray, folds: np.ndarray,
                            num_classes: int) -> int:
    """Images classified right by copies of ``mapping``, each fitted on the images of the other folds.

    k-fold cross-validation (Stone 1974) on scores already paid for: an estimate of the accuracy that
    ``mapping`` fitted on such scores reaches on new images, from every scored image rather than from
    the validation split alone. ``folds`` gives each image's fold: give two prompts scored on the same
    images the same folds to pair their comparison. Folds must not follow the labels: an index mod k
    over a split stratified in blocks of 10 skews each fold's classes (squares: 6.5 points too low).
    """
    correct = 0
    for k in np.unique(folds):
        held_out = folds == k
        fitted = copy.deepcopy(mapping).fit(scores[~held_out], torch.from_numpy(labels[~held_out]), num_classes)
        correct += int(np.sum(fitted.probabilities(scores[held_out]).argmax(dim=1).numpy() == labels[held_out]))
    return correct


def score_all(backend: Backend, prompt: Prompt, theta: np.ndarray, images: np.ndarray, chunk: int = 256) -> torch.Tensor:
    """:func:`score` in queries of at most ``chunk`` images, to bound memory."""
    return torch.cat([score(backend, prompt, theta, images[i : i + chunk]) for i in range(0, len(images), chunk)])


def evaluate(backend: Backend, prompt: Prompt, theta: np.ndarray, mapping: OutputMapping, data: Dataset,
             chunk: int = 256) -> float:
    """Accuracy of ``theta`` on ``data``."""
    return mapped_accuracy(mapping, score_all(backend, prompt, theta, data.images, chunk), data.labels)


class ScoreBuffer:
    """The most recent ``capacity`` (scores, label) rows the run paid for, to refit a mapping on."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.scores: torch.Tensor | None = None
        self.labels = torch.zeros(0, dtype=torch.long)

    def add(self, scores: torch.Tensor, labels: torch.Tensor) -> None:
        scores = scores.detach().to(torch.float64)
        combined = scores if self.scores is None else torch.cat([self.scores, scores])
        self.scores = combined[-self.capacity :]
        self.labels = torch.cat([self.labels, labels.to(torch.long)])[-self.capacity :]

    def __len__(self) -> int:
        return len(self.labels)
