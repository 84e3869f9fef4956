"""The white-box reference: the same prompt, mapping, splits and selection, trained with gradients.

Adam (Kingma & Ba 2015) on the prompt parameters through a local torch backend, the composed image
quantized with a straight-through estimator so it scores the same pixels as the black-box path.
It is the upper bound printed beside black-box results. Forward passes count against ``--budget``
like queries, so ``--budget`` = epochs x training images (+ mapping and validation).
"""

from __future__ import annotations

import numpy as np
import torch

from backends.counting import CountingBackend
from backends.torch_classifier import TorchClassifierBackend
from blackbox_vp.config import RunConfig
from blackbox_vp.data import Splits
from blackbox_vp.losses import LOSSES
from blackbox_vp.mappings import OutputMapping
from blackbox_vp.prompts import Prompt


def torch_model_of(learning: CountingBackend) -> TorchClassifierBackend:
    model = learning.unwrap()
    if not isinstance(model, TorchClassifierBackend):
        raise ValueError(f"--optimizer whitebox needs a local torch backend (reference or surrogate) for gradients; "
                         f"{type(model).__name__} gives none")
    return model


def run_whitebox(config: RunConfig, prompt: Prompt, mapping: OutputMapping, splits: Splits,
                 learning: CountingBackend, plan, selector, rng: np.random.Generator) -> int:
    """Adam steps on minibatches until the budget keeps room for only a last validation; returns steps."""
    model = torch_model_of(learning)
    model.model.requires_grad_(False)
    loss_fn = LOSSES.get(config.loss)
    theta = torch.tensor(prompt.initial(), dtype=torch.float32, device=model.device, requires_grad=True)
    adam = torch.optim.Adam([theta], lr=config.lr)
    next_validation = learning.images_sent + plan.validation_every
    steps = 0
    while learning.fits(plan.step_images + plan.validation_pass):
        batch = rng.choice(len(splits.train), size=min(config.batch_size, len(splits.train)), replace=False)
        images = torch.tensor(splits.train.images[batch], device=model.device).permute(0, 3, 1, 2).float()
        labels = torch.tensor(splits.train.labels[batch], device=model.device)
        probabilities = model.logits(prompt.apply_differentiable(theta, images)).softmax(dim=1).cpu()
        loss = loss_fn(mapping.probabilities(probabilities.double()), labels.cpu()).mean()
        selector.buffer.add(probabilities, labels.cpu())
        adam.zero_grad()
        loss.backward()
        adam.step()
        learning.charge(len(batch))
        steps += 1
        selector.progress.update(learning.images_sent - selector.progress.n)
        if learning.images_sent >= next_validation or not learning.fits(plan.step_images + plan.validation_pass):
            selector.consider(theta.detach().cpu().numpy().astype(np.float64), steps, loss.item())
            while next_validation <= learning.images_sent:
                next_validation += plan.validation_every
    return steps
