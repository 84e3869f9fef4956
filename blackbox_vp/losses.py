"""Losses on mapped class probabilities: what a black-box API returns, never its logits."""

from __future__ import annotations

from collections.abc import Callable

import torch

from backends.registry import Registry
from blackbox_vp.mappings import EPSILON

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LOSSES: Registry[Callable[..., torch.Tensor]] = Registry("loss")


@LOSSES.register("ce", "cross-entropy on the mapped class probabilities")
def cross_entropy(probabilities: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample -log p(y); ``probabilities`` (N, C), ``labels`` (N,)."""
    picked = probabilities.gather(1, labels.view(-1, 1)).squeeze(1)
    return -torch.log(picked.clamp_min(EPSILON))


@LOSSES.register("focal", "focal loss -(1 - p_y)^2 log p_y (Lin et al. 2017; used by BAR, Tsai et al. 2020)")
def focal(probabilities: torch.Tensor, labels: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Per-sample focal loss (Lin et al. 2017, eq. 5): down-weights examples already classified well."""
    picked = probabilities.gather(1, labels.view(-1, 1)).squeeze(1).clamp_min(EPSILON)
    return -((1.0 - picked) ** gamma) * torch.log(picked)


@LOSSES.register("margin", "log-probability margin max_{c!=y} log p_c - log p_y, floored at -5 (Carlini & Wagner 2017)")
def margin(probabilities: torch.Tensor, labels: torch.Tensor, kappa: float = 5.0) -> torch.Tensor:
    """Per-sample margin loss (Carlini & Wagner 2017, eq. f6 on log-probabilities), floored at -kappa."""
    log_p = torch.log(probabilities.clamp_min(EPSILON))
    own = log_p.gather(1, labels.view(-1, 1)).squeeze(1)
    others = log_p.scatter(1, labels.view(-1, 1), float("-inf")).max(dim=1).values
    return (others - own).clamp_min(-kappa)
