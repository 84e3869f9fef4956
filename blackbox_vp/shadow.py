"""The shadow: a local surrogate model whose outputs are fitted to the target's paid-for answers.

The shadow method learns the prompt white-box on a local model that imitates the target. Every image
the target scored (the mapping images under the initial prompt, then the training images under each
prompt the method sends) is also shown to the surrogate, and a :class:`LabelAdapter` maps the
surrogate's log-probabilities into the *target's* label space, fitted to the target's probabilities
by KL divergence (knowledge distillation, Hinton et al. 2015, eq. 2 at temperature 1). So it works for
any API: an ImageNet API (the adapter starts as the identity), an API with labels of its own (it starts
from the labels whose names match, else from zero), a top-k-only API (the floor mass is what it fits).

Priming a local model on the target's answers follows AReS (CVPR 2026, "prime once, reprogram
locally"); refitting it on the inputs the search visits follows the Simulator Attack (Ma et al. 2021)
and LeBA (Yang et al. 2020). Unlike AReS the prompt is deployed on the target, not on the local model.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from backends.torch_classifier import TorchClassifierBackend

FEATURE_FLOOR = -30.0  # log-probabilities are clamped here (a probability of 1e-13), on both paths alike
FEATURE_CHUNK = 64  # images per surrogate forward when the features of scored images are taken


class LabelAdapter:
    """``target logits = features @ (W0 + D) + b``, features the surrogate's log-probabilities (clamped).

    ``W0`` is 1 where a target label has the surrogate label of the same name (case-insensitive), so
    for two ImageNet models the adapter starts as the identity; :meth:`fit` learns ``D`` and ``b``,
    ``D`` penalized by ``l2`` (times its squared norm) so that a few hundred answers cannot pull it far.
    """

    def __init__(self, source_labels: list[str], target_labels: list[str], l2: float = 1e-3):
        names = {name.lower(): index for index, name in enumerate(source_labels)}
        self.w0 = torch.zeros(len(source_labels), len(target_labels))
        for column, name in enumerate(target_labels):
            if name.lower() in names:
                self.w0[names[name.lower()], column] = 1.0
        self.matched = int(self.w0.sum().item())
        self.l2 = l2
        self.delta = torch.zeros_like(self.w0)
        self.bias = torch.zeros(len(target_labels))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        weight = (self.w0 + self.delta).to(features.device)
        return features @ weight + self.bias.to(features.device)

    def fit(self, features: torch.Tensor, answers: torch.Tensor, max_iter: int = 100) -> float:
        """Fit ``D`` and ``b`` from zero on (N, Ks) features and the target's (N, Kt) probabilities;
        returns the mean KL divergence of the target's answers from the adapted surrogate's, after the fit."""
        features, answers = features.float(), answers.float()
        delta = torch.zeros_like(self.w0, requires_grad=True)
        bias = torch.zeros_like(self.bias, requires_grad=True)
        solver = torch.optim.LBFGS([delta, bias], lr=1.0, max_iter=max_iter, history_size=10,
                                   line_search_fn="strong_wolfe", tolerance_grad=1e-6)

        def cross_entropy() -> torch.Tensor:
            return -(answers * F.log_softmax(features @ (self.w0 + delta) + bias, dim=1)).sum(dim=1).mean()

        def closure() -> torch.Tensor:
            solver.zero_grad()
            loss = cross_entropy() + self.l2 * delta.pow(2).sum()
            loss.backward()
            return loss

        solver.step(closure)
        self.delta, self.bias = delta.detach(), bias.detach()
        with torch.no_grad():
            entropy = (answers * answers.clamp_min(1e-30).log()).sum(dim=1).mean()
            return float(cross_entropy() + entropy)


class ShadowModel:
    """The surrogate followed by the adapter: logits in the target's label space, differentiable in the
    image, so :class:`blackbox_vp.optimizers.whitebox.Whitebox` trains a prompt on it as on the target itself."""

    def __init__(self, surrogate: TorchClassifierBackend, adapter: LabelAdapter):
        self.surrogate, self.adapter = surrogate, adapter
        self.device = surrogate.device
        surrogate.model.requires_grad_(False)

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """Float images (N, 3, H, W) in [0, 1] -> (N, Kt) logits of the target's labels."""
        features = self.surrogate.logits(pixels).float().log_softmax(dim=1).clamp_min(FEATURE_FLOOR)
        return self.adapter.logits(features)

    def features(self, images: np.ndarray) -> torch.Tensor:
        """The surrogate's clamped log-probabilities (N, Ks) of uint8 images (N, H, W, 3), as the target got them."""
        chunks = [torch.from_numpy(self.surrogate.query(images[start : start + FEATURE_CHUNK]))
                  for start in range(0, len(images), FEATURE_CHUNK)]
        return torch.cat(chunks).float().clamp_min(1e-38).log().clamp_min(FEATURE_FLOOR)

    def answers(self, images: np.ndarray) -> torch.Tensor:
        """The shadow's probabilities (N, Kt) of the target's labels for uint8 images (N, H, W, 3): what it predicts
        the target would answer."""
        with torch.no_grad():
            return self.adapter.logits(self.features(images)).softmax(dim=1)

    def disagreement(self, features: torch.Tensor, answers: torch.Tensor) -> float:
        """Mean KL divergence of the target's ``answers`` from the shadow's on ``features``."""
        with torch.no_grad():
            log_q = F.log_softmax(self.adapter.logits(features.float()), dim=1)
            answers = answers.float()
            return float((answers * (answers.clamp_min(1e-30).log() - log_q)).sum(dim=1).mean())
