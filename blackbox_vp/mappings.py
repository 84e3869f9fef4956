"""Output mappings: from the backend's K label probabilities to the user's C class probabilities.

Mappings work on torch tensors so that the black-box run and the white-box reference share them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch

from blackbox_vp.registry import Registry

EPSILON = 1e-12


class OutputMapping(ABC):
    """Fitted on scores the run already paid for; maps (N, K) scores to (N, C) probabilities."""

    name: str

    @abstractmethod
    def fit(self, scores: torch.Tensor, labels: torch.Tensor, num_classes: int) -> OutputMapping:
        """Fit on (N, K) probabilities and (N,) integer labels; returns self."""

    @abstractmethod
    def probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        """(N, K) backend probabilities -> (N, C) class probabilities (rows sum to 1)."""

    @abstractmethod
    def state(self) -> dict:
        """JSON-serializable fitted state (saved with a prompt)."""

    @classmethod
    @abstractmethod
    def from_state(cls, state: dict) -> OutputMapping:
        """Rebuild a fitted mapping from :meth:`state`."""


MAPPINGS: Registry[OutputMapping] = Registry("output mapping")


@MAPPINGS.register("frequency", "one source label per class, greedy one-to-one on top-1 counts (Tsai et al. 2020)")
class FrequencyMapping(OutputMapping):
    """Each class takes the source label that its images most often rank first, one-to-one.

    Greedy assignment (BAR, Tsai et al. 2020, section 3.2; ILM-VP, Chen et al. 2023, Alg. 1):
    repeatedly take the (class, label) pair with the largest count of top-1 predictions, ties broken
    by mean probability, and remove both. Class probabilities are the chosen labels' probabilities,
    renormalized.
    """

    name = "frequency"

    def __init__(self, source_labels: list[int] | None = None):
        self.source_labels = source_labels

    def fit(self, scores: torch.Tensor, labels: torch.Tensor, num_classes: int) -> FrequencyMapping:
        scores = torch.as_tensor(scores, dtype=torch.float64)
        num_labels = scores.shape[1]
        if num_classes > num_labels:
            raise ValueError(f"a one-to-one mapping needs at least as many backend labels ({num_labels}) as "
                             f"classes ({num_classes})")
        top1 = scores.argmax(dim=1)
        table = np.zeros((num_classes, num_labels))
        for c in range(num_classes):
            members = labels == c
            if members.any():
                table[c] = np.bincount(top1[members].numpy(), minlength=num_labels)
                table[c] += scores[members].mean(dim=0).numpy()  # < 1: only breaks ties
        chosen = [0] * num_classes
        for _ in range(num_classes):
            c, k = np.unravel_index(np.argmax(table), table.shape)
            chosen[c] = int(k)
            table[c, :] = -np.inf
            table[:, k] = -np.inf
        self.source_labels = chosen
        return self

    def probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        if self.source_labels is None:
            raise RuntimeError("the frequency mapping is not fitted yet")
        picked = scores[:, self.source_labels]
        return picked / picked.sum(dim=1, keepdim=True).clamp_min(EPSILON)

    def state(self) -> dict:
        return {"type": self.name, "source_labels": self.source_labels}

    @classmethod
    def from_state(cls, state: dict) -> FrequencyMapping:
        return cls(list(state["source_labels"]))


def mapping_from_state(state: dict) -> OutputMapping:
    """Rebuild any registered mapping from its saved state."""
    return MAPPINGS.get(state["type"]).from_state(state)
