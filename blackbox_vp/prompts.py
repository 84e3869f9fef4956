"""Visual prompts: learnable pixels composed with the user's images into what the model sees.

A prompt owns the shapes and bounds: optimizers see an unconstrained flat vector ``theta``; the
prompt's parameterization expands it to a (3, H, W) pattern, squashed into [0, 255] with
``127.5 * (1 + tanh(x))`` (BAR, Tsai et al. 2020, eq. 1 uses the same tanh bound) and composed.
``theta = 0`` is a uniform mid-grey prompt: the no-prompt baseline.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch
import torch.nn.functional as F

from blackbox_vp.parameterizations import PARAMETERIZATIONS, Parameterization
from blackbox_vp.quantize import quantize, to_uint8_nhwc
from blackbox_vp.registry import Registry


class Prompt(ABC):
    """Composes images with a pattern on a canvas of ``canvas_size``; user images are ``inner_size``."""

    name: str
    canvas_size: tuple[int, int]
    inner_size: tuple[int, int]
    parameterization: Parameterization

    @property
    def dimension(self) -> int:
        return self.parameterization.dimension

    def initial(self) -> np.ndarray:
        """The starting point: zeros, a uniform grey prompt."""
        return np.zeros(self.dimension)

    def pattern(self, theta: torch.Tensor) -> torch.Tensor:
        """Pixel values in [0, 255] of the prompt, (3, H, W) (or (P, 3, H, W) for P vectors)."""
        return 127.5 * (1.0 + torch.tanh(self.parameterization.expand(theta)))

    @abstractmethod
    def compose(self, theta: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Float pixels (N, 3, H, W) in [0, 255], differentiable in ``theta``, not yet quantized.

        ``images`` are float (N, 3, h, w) in [0, 255] at ``inner_size``.
        """

    def config(self) -> dict:
        """Everything needed to rebuild the prompt (without its parameters)."""
        return {"type": self.name, "canvas_size": list(self.canvas_size),
                "parameterization": self.parameterization.config()}

    # Black-box path -------------------------------------------------------------------------------
    @torch.no_grad()
    def apply(self, thetas: np.ndarray, images: np.ndarray) -> np.ndarray:
        """uint8 images (N, h, w, 3) prompted with each of ``thetas`` (P, d) -> uint8 (P * N, H, W, 3).

        Candidate-major order: rows [p * N, (p + 1) * N) carry candidate p. Quantized to 8 bits as
        an API receives them.
        """
        thetas = np.atleast_2d(thetas)
        x = images_to_tensor(images)
        out = np.empty((len(thetas) * len(images), *self.canvas_size, 3), dtype=np.uint8)
        for p, theta in enumerate(thetas):
            composed = self.compose(torch.as_tensor(theta, dtype=torch.float32), x)
            out[p * len(images) : (p + 1) * len(images)] = to_uint8_nhwc(composed)
        return out

    # White-box path -------------------------------------------------------------------------------
    def apply_differentiable(self, theta: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Quantized (straight-through) float images (N, 3, H, W) in [0, 1] for a torch model."""
        return quantize(self.compose(theta, images)) / 255.0


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, h, w, 3) -> float (N, 3, h, w) in [0, 255]."""
    return torch.tensor(images).permute(0, 3, 1, 2).float()


PROMPTS: Registry[Prompt] = Registry("prompt")


@PROMPTS.register("padding", "a learnable border around the shrunken image (Bahng et al. 2022); --width pixels")
class PaddingPrompt(Prompt):
    name = "padding"

    def __init__(self, canvas_size: tuple[int, int] = (224, 224), width: int = 30,
                 parameterization: Parameterization | None = None):
        height, wide = canvas_size
        if width < 1 or 2 * width >= min(height, wide):
            raise ValueError(f"prompt width {width} does not fit a {height}x{wide} canvas: it must be between 1 "
                             f"and {(min(height, wide) - 1) // 2}")
        self.canvas_size = (height, wide)
        self.width = width
        self.inner_size = (height - 2 * width, wide - 2 * width)
        self.parameterization = parameterization or PARAMETERIZATIONS.get("grid")(self.canvas_size)
        mask = torch.ones(1, height, wide)
        mask[:, width : height - width, width : wide - width] = 0.0
        self.mask = mask

    def compose(self, theta: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        w = self.width
        padded = F.pad(images, (w, w, w, w))
        return padded * (1.0 - self.mask) + self.pattern(theta) * self.mask

    def config(self) -> dict:
        return {**super().config(), "width": self.width}
