"""Output mappings: from the backend's K label probabilities to the user's C class probabilities.

Mappings work on torch tensors so that the black-box run and the white-box reference share them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch
import torch.nn.functional as F

from backends.base import PROBABILITY_FLOOR
from backends.errors import ConfigurationError
from backends.registry import Registry

EPSILON = PROBABILITY_FLOOR


class OutputMapping(ABC):
    """Fitted on scores the run already paid for; maps (N, K) scores to (N, C) probabilities."""

    name: str
    refit: bool = False  # refitted on the scores of recent steps before each validation (ILM-VP)
    searched_with: str | None = None  # a prompt search optimizes this mapping instead; self is refitted at the end

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


MAPPINGS: Registry[type[OutputMapping]] = Registry("output mapping", given=(  # what fitting sets, or a prompt file restores
    "source_labels", "weight", "bias", "mean", "scale", "num_classes"))


@MAPPINGS.register("frequency", "one source label per class, greedy one-to-one on top-1 counts (Tsai et al. 2020)")
class FrequencyMapping(OutputMapping):
    """Each class takes the source label that its images most often rank first, one-to-one.

    Greedy assignment (BAR, Tsai et al. 2020, section 3.2; ILM-VP, Chen et al. 2023, Alg. 1):
    repeatedly take the (class, label) pair with the largest count of top-1 predictions, ties broken
    by mean probability, and remove both. Class probabilities are the chosen labels' probabilities,
    renormalized.
    """


    def __init__(self, source_labels: list[int] | None = None):
        self.source_labels = source_labels

    def fit(self, scores: torch.Tensor, labels: torch.Tensor, num_classes: int) -> FrequencyMapping:
        self.source_labels = self.assign(scores, labels, num_classes)
        return self

    @staticmethod
    def assign(scores: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[int]:
        """The greedy one-to-one assignment: each class's source label."""
        scores = torch.as_tensor(scores, dtype=torch.float64)
        num_labels = scores.shape[1]
        if num_classes > num_labels:
            raise ConfigurationError(f"a one-to-one mapping needs at least as many backend labels ({num_labels}) as "
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
            row, column = (int(index) for index in np.unravel_index(np.argmax(table), table.shape))
            chosen[row] = column
            table[row, :] = -np.inf
            table[:, column] = -np.inf
        return chosen

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


@MAPPINGS.register("iterative", "frequency mapping refitted on prompted outputs before each validation (ILM-VP, Chen et al. 2023)")
class IterativeMapping(FrequencyMapping):
    """ILM-VP (Chen et al. 2023, Alg. 1): the frequency mapping recomputed as the prompt changes, here
    from the scores of the most recent optimization steps (already paid for) before each validation."""

    refit = True


def mapping_from_state(state: dict) -> OutputMapping:
    """Rebuild any registered mapping from its saved state."""
    return MAPPINGS.get(state["type"]).from_state(state)


@MAPPINGS.register("multilabel", "m source labels per class, probabilities averaged (BAR, Tsai et al. 2020); --mapping-options labels_per_class=m (default 5)")
class MultiLabelMapping(OutputMapping):
    """Each class owns ``m`` source labels, assigned greedily and disjointly by top-1 counts.

    BAR (Tsai et al. 2020, section 3.2) averages the probabilities of a class's m labels; class
    probabilities are those averages, renormalized.
    """


    def __init__(self, labels_per_class: int = 5, source_labels: list[list[int]] | None = None):
        self.labels_per_class = labels_per_class
        self.source_labels = source_labels

    def fit(self, scores: torch.Tensor, labels: torch.Tensor, num_classes: int) -> MultiLabelMapping:
        chosen: list[list[int]] = [[] for _ in range(num_classes)]
        taken: list[int] = []
        for _ in range(self.labels_per_class):
            remaining = torch.as_tensor(scores, dtype=torch.float64).clone()
            remaining[:, taken] = 0.0  # labels already owned cannot be chosen again
            for c, k in enumerate(FrequencyMapping.assign(remaining, labels, num_classes)):
                chosen[c].append(k)
                taken.append(k)
        self.source_labels = chosen
        return self

    def probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        if self.source_labels is None:
            raise RuntimeError("the multi-label mapping is not fitted yet")
        index = torch.tensor(self.source_labels)  # (C, m)
        averaged = scores[:, index].mean(dim=2)
        return averaged / averaged.sum(dim=1, keepdim=True).clamp_min(EPSILON)

    def state(self) -> dict:
        return {"type": self.name, "labels_per_class": self.labels_per_class, "source_labels": self.source_labels}

    @classmethod
    def from_state(cls, state: dict) -> MultiLabelMapping:
        return cls(state["labels_per_class"], [list(labels) for labels in state["source_labels"]])


@MAPPINGS.register("linear", "a linear head on the log-probabilities, fitted locally on paid-for scores (no extra queries)")
class LinearHeadMapping(OutputMapping):
    """Multinomial logistic regression on standardized log-probabilities, L2-regularized.

    A prompt search does not optimize against the head (a prompt tuned to a head fitted on other
    prompts' scores only exploits it); it optimizes the frequency mapping's loss, and the head is
    fitted on the best searched prompt's own scores at the end (see ``blackbox_vp.run``, phase "head").
    Fitted by L-BFGS on scores the run already paid for. ``l2`` is the penalty on the weights,
    relative to the mean cross-entropy; ``scale_quantile`` floors every feature's scale at that quantile
    of the scales (0: no floor beyond 1e-6), for a head that a prompt is trained through (the shadow's
    ``--transfer-head-l2``). Differentiable in the scores, so the white-box reference
    trains through it.
    """

    searched_with = "frequency"

    def __init__(self, l2: float = 1e-2, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                 mean: torch.Tensor | None = None, scale: torch.Tensor | None = None, scale_quantile: float = 0.0):
        self.l2, self.scale_quantile = l2, scale_quantile
        self.weight, self.bias, self.mean, self.scale = weight, bias, mean, scale

    @staticmethod
    def features(scores: torch.Tensor) -> torch.Tensor:
        return torch.log(scores.clamp_min(EPSILON))

    def fit(self, scores: torch.Tensor, labels: torch.Tensor, num_classes: int) -> LinearHeadMapping:
        x = self.features(torch.as_tensor(scores, dtype=torch.float64))
        self.mean = x.mean(dim=0)
        scale = x.std(dim=0, correction=int(len(x) > 1))  # one image (--mapping-images 1): 0
        floor = float(torch.quantile(scale, self.scale_quantile)) if self.scale_quantile else 0.0
        self.scale = scale.clamp_min(max(floor, 1e-6))
        x = (x - self.mean) / self.scale
        y = torch.as_tensor(labels, dtype=torch.long)
        weight = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
        bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
        solver = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=200, history_size=20,
                                   line_search_fn="strong_wolfe", tolerance_grad=1e-6)

        def closure() -> torch.Tensor:
            solver.zero_grad()
            loss = F.cross_entropy(x @ weight + bias, y) + self.l2 * weight.pow(2).sum()
            loss.backward()
            return loss

        solver.step(closure)
        self.weight, self.bias = weight.detach(), bias.detach()
        return self

    def fitted(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(weight, bias, mean, scale), which fitting (or :meth:`from_state`) sets together."""
        if self.weight is None or self.bias is None or self.mean is None or self.scale is None:
            raise RuntimeError("the linear head is not fitted yet")
        return self.weight, self.bias, self.mean, self.scale

    def logits(self, scores: torch.Tensor) -> torch.Tensor:
        weight, bias, mean, scale = self.fitted()
        x = (self.features(scores) - mean.to(scores.dtype)) / scale.to(scores.dtype)
        return x @ weight.to(scores.dtype) + bias.to(scores.dtype)

    def probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        return self.logits(scores).softmax(dim=1)

    def state(self) -> dict:
        weight, bias, mean, scale = self.fitted()
        return {"type": self.name, "l2": self.l2, "scale_quantile": self.scale_quantile, "weight": weight.tolist(),
                "bias": bias.tolist(), "mean": mean.tolist(), "scale": scale.tolist()}

    @classmethod
    def from_state(cls, state: dict) -> LinearHeadMapping:
        tensor = lambda key: torch.tensor(state[key], dtype=torch.float64)  # noqa: E731
        return cls(state["l2"], tensor("weight"), tensor("bias"), tensor("mean"), tensor("scale"),
                   state.get("scale_quantile", 0.0))  # prompt files written before it had none


@MAPPINGS.register("identity", "the backend's labels are the classes, in order (zero-shot backends given the class names)")
class IdentityMapping(OutputMapping):
    """For a backend whose K labels are the user's C classes in the same order (a zero-shot model
    given the class names): class probabilities are the scores, renormalized. Fitting only checks
    that K == C; it needs no scores beyond their shape."""


    def __init__(self, num_classes: int | None = None):
        self.num_classes = num_classes

    def fit(self, scores: torch.Tensor, labels: torch.Tensor, num_classes: int) -> IdentityMapping:
        num_labels = scores.shape[1]
        if num_labels != num_classes:
            raise ConfigurationError(f"the identity mapping needs as many backend labels as classes, got {num_labels} labels "
                             f"for {num_classes} classes; use a zero-shot backend built from the class names, or "
                             "another mapping")
        self.num_classes = num_classes
        return self

    def probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        if self.num_classes is None:
            raise RuntimeError("the identity mapping is not fitted yet")
        if scores.shape[1] != self.num_classes:
            raise ConfigurationError(f"the identity mapping was fitted for {self.num_classes} classes, got {scores.shape[1]} "
                             "scores per image")
        return scores / scores.sum(dim=1, keepdim=True).clamp_min(EPSILON)

    def state(self) -> dict:
        return {"type": self.name, "num_classes": self.num_classes}

    @classmethod
    def from_state(cls, state: dict) -> IdentityMapping:
        return cls(int(state["num_classes"]))
