"""The white-box reference, and the shadow method's training: the prompt trained with gradients.

The same prompt, mapping, splits and selection as a black-box search.

Adam (Kingma & Ba 2015) on the prompt parameters through a local torch backend, the composed image
quantized with a straight-through estimator so it scores the same pixels as the black-box path.
It is the upper bound printed beside black-box results. Forward passes count against ``--budget``
like queries, so ``--budget`` = epochs x training images (+ mapping and validation).
"""

from __future__ import annotations

from typing import ClassVar, Protocol

import numpy as np
import torch

from backends.base import Backend, BackendWrapper
from backends.errors import ConfigurationError
from backends.torch_classifier import TorchClassifierBackend
from blackbox_vp.losses import Loss
from blackbox_vp.mappings import OutputMapping
from blackbox_vp.optimizers.base import OPTIMIZERS
from blackbox_vp.prompts import Prompt


class LogitsModel(Protocol):
    """What the prompt is trained through: a local torch model (the target's own, or the shadow's surrogate and
    adapter) that gives differentiable logits on ``device``."""

    device: torch.device

    def logits(self, pixels: torch.Tensor) -> torch.Tensor: ...


def torch_model_of(backend: Backend) -> TorchClassifierBackend:
    """The local torch model below any wrappers; an error if there is none to take gradients from."""
    model = backend.unwrap() if isinstance(backend, BackendWrapper) else backend
    if not isinstance(model, TorchClassifierBackend):
        raise ConfigurationError(f"--optimizer whitebox needs a local torch backend (reference or surrogate) for gradients; "
                         f"{type(model).__name__} gives none")
    return model


def _to_cpu(value: object) -> object:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    return value


@OPTIMIZERS.register("whitebox", "the gradient reference: the prompt trained with gradients through a local torch "
                                 "backend itself")
class Whitebox:
    """The prompt parameters and their Adam state; pickles (on the CPU) into the run's checkpoint.

    Not an ask/tell search: the run calls :meth:`step` with the local torch model (``needs_gradients``),
    the target's own for the reference, the surrogate for the shadow method (``trains_on_surrogate``).
    """

    needs_gradients: ClassVar[bool] = True
    trains_on_surrogate: ClassVar[bool] = False
    accepts_prior: ClassVar[bool] = False
    candidates_per_step: ClassVar[int] = 1  # one prompt trained per step, on the step's images

    def __init__(self, x0: np.ndarray, lr: float, device: str | torch.device = "cpu"):
        self.lr = lr
        self.steps = 0
        self._build(torch.tensor(x0, dtype=torch.float32), None, device)

    def _build(self, theta: torch.Tensor, adam_state: dict | None, device: str | torch.device) -> None:
        self.theta = theta.detach().to(device).requires_grad_(True)
        self.adam = torch.optim.Adam([self.theta], lr=self.lr)
        if adam_state is not None:
            self.adam.load_state_dict(adam_state)  # moves the moments to theta's device

    def to(self, device: str | torch.device) -> Whitebox:
        """The same state on ``device`` (the model's)."""
        if self.theta.device != torch.device(device):
            self._build(self.theta, self.adam.state_dict(), device)
        return self

    def recommend(self) -> np.ndarray:
        return self.theta.detach().cpu().numpy().astype(np.float64)

    @property
    def step_size(self) -> float:
        return self.lr

    def step(self, model: LogitsModel, prompt: Prompt, mapping: OutputMapping, loss_fn: Loss,
             images: np.ndarray, labels: np.ndarray) -> tuple[float, torch.Tensor]:
        """One Adam step on a minibatch; the mean loss and the model's probabilities (N, K) on the CPU."""
        pixels = torch.tensor(images, device=model.device).permute(0, 3, 1, 2).float()
        probabilities = model.logits(prompt.apply_differentiable(self.theta, pixels)).softmax(dim=1).cpu()
        loss = loss_fn(mapping.probabilities(probabilities.double()), torch.from_numpy(labels)).mean()
        self.adam.zero_grad()
        loss.backward()
        self.adam.step()
        self.steps += 1
        return loss.item(), probabilities.detach()

    def __getstate__(self) -> dict:
        return {"lr": self.lr, "steps": self.steps, "theta": self.theta.detach().cpu(),
                "adam": _to_cpu(self.adam.state_dict())}

    def __setstate__(self, state: dict) -> None:
        self.lr, self.steps = state["lr"], state["steps"]
        self._build(state["theta"], state["adam"], "cpu")


@OPTIMIZERS.register("shadow", "ours: the prompt trained white-box on a local surrogate whose label adapter is fitted "
                               "(KL) to the target's answers, in rounds (--rounds, --epochs, --surrogate)")
class ShadowTraining(Whitebox):
    """The shadow method's prompt parameters: Adam through the local surrogate, in the rounds that
    :mod:`blackbox_vp.shadow_phases` runs (prime, distil, transfer, verify, correct)."""

    trains_on_surrogate = True
