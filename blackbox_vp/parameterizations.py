"""Parameterizations: how the flat vector an optimizer sees becomes a full-resolution pattern.

Each maps ``theta`` (d,) to an unconstrained (3, H, W) tensor; the prompt then squashes it into
pixel values and masks it. A smaller d makes zeroth-order optimization feasible.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F

from blackbox_vp.registry import Registry


class Parameterization(ABC):
    """Maps a flat parameter vector to a (3, H, W) pattern for a canvas of ``size`` = (H, W)."""

    name: str

    def __init__(self, size: tuple[int, int]):
        self.size = size

    @property
    @abstractmethod
    def dimension(self) -> int:
        """Length of the flat vector the optimizer sees."""

    @abstractmethod
    def expand(self, theta: torch.Tensor) -> torch.Tensor:
        """(d,) or (P, d) -> (3, H, W) or (P, 3, H, W)."""

    def config(self) -> dict:
        """What is needed to rebuild it (saved with a prompt)."""
        return {"type": self.name}


PARAMETERIZATIONS: Registry[Parameterization] = Registry("parameterization")


@PARAMETERIZATIONS.register("full", "one parameter per pixel and channel (3*H*W dimensions)")
class FullResolution(Parameterization):
    name = "full"

    def __init__(self, size: tuple[int, int]):
        super().__init__(size)

    @property
    def dimension(self) -> int:
        return 3 * self.size[0] * self.size[1]

    def expand(self, theta: torch.Tensor) -> torch.Tensor:
        return theta.reshape(*theta.shape[:-1], 3, *self.size)


@PARAMETERIZATIONS.register("grid", "a coarse g x g x 3 grid upsampled bilinearly to the canvas (--grid g)")
class CoarseGrid(Parameterization):
    name = "grid"

    def __init__(self, size: tuple[int, int], grid: int = 8):
        super().__init__(size)
        if grid < 1:
            raise ValueError(f"grid must be >= 1, got {grid}")
        self.grid = grid

    @property
    def dimension(self) -> int:
        return 3 * self.grid * self.grid

    def expand(self, theta: torch.Tensor) -> torch.Tensor:
        batch = theta.reshape(-1, 3, self.grid, self.grid)
        pattern = F.interpolate(batch, size=self.size, mode="bilinear", align_corners=True)
        return pattern.reshape(*theta.shape[:-1], 3, *self.size)

    def config(self) -> dict:
        return {**super().config(), "grid": self.grid}
