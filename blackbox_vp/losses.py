"""Losses on mapped class probabilities: what a black-box API returns, never its logits."""

from __future__ import annotations

from collections.abc import Callable

import torch

from blackbox_vp.mappings import EPSILON
from blackbox_vp.registry import Registry

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LOSSES: Registry[Loss] = Registry("loss")


@LOSSES.register("ce", "cross-entropy on the mapped class probabilities")
def cross_entropy(probabilities: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample -log p(y); ``probabilities`` (N, C), ``labels`` (N,)."""
    picked = probabilities.gather(1, labels.view(-1, 1)).squeeze(1)
    return -torch.log(picked.clamp_min(EPSILON))
