"""A local surrogate model's gradient as a prior direction for black-box steps.

Prior-guided random gradient-free optimization (P-RGF, Cheng et al. 2019) uses the gradient of a
local white-box model as a direction the unknown target's gradient is likely to share. Here the
surrogate is a second ImageNet model (EfficientNet-Lite1), so the output mapping fitted on the
target's labels applies to the surrogate's outputs unchanged; its gradient costs no query.
"""

from __future__ import annotations

import numpy as np
import torch

from backends.torch_classifier import TorchClassifierBackend
from blackbox_vp.data import Dataset
from blackbox_vp.losses import Loss
from blackbox_vp.mappings import OutputMapping
from blackbox_vp.prompts import Prompt
from blackbox_vp.shadow import ShadowModel


class SurrogatePrior:
    """``direction(theta)``: the unit-norm negative gradient of the loss through the surrogate, on a minibatch
    of training images drawn with ``rng``. The surrogate is any local model with ``logits(pixels)`` in the
    target's labels and a ``device``: a torch classifier, or the shadow method's surrogate + adapter."""

    def __init__(self, surrogate: TorchClassifierBackend | ShadowModel, prompt: Prompt, mapping: OutputMapping,
                 loss: Loss, train: Dataset, batch_size: int, rng: np.random.Generator):
        self.surrogate, self.prompt, self.mapping, self.loss = surrogate, prompt, mapping, loss
        self.train, self.batch_size, self.rng = train, batch_size, rng

    def direction(self, theta: np.ndarray) -> np.ndarray:
        batch = self.rng.choice(len(self.train), size=min(self.batch_size, len(self.train)), replace=False)
        device = self.surrogate.device
        images = torch.tensor(self.train.images[batch], device=device).permute(0, 3, 1, 2).float()
        labels = torch.tensor(self.train.labels[batch])
        parameters = torch.tensor(theta, dtype=torch.float32, device=device, requires_grad=True)
        probabilities = self.surrogate.logits(self.prompt.apply_differentiable(parameters, images)).softmax(dim=1)
        self.loss(self.mapping.probabilities(probabilities.cpu().double()), labels).mean().backward()
        assert parameters.grad is not None, "backward fills the gradient of a leaf that requires it"
        gradient = parameters.grad.detach().cpu().numpy().astype(np.float64)
        norm = np.linalg.norm(gradient)
        return -gradient / norm if norm > 0 else gradient
