"""Parameterizations: how the flat vector an optimizer sees becomes a pattern.

Each maps ``theta`` (d,) to an unconstrained (3, H, W) tensor; the prompt then squashes it into
pixel values and masks it. A smaller d makes zeroth-order optimization feasible. ``size`` is the
pattern's size, which the prompt sets (:meth:`Parameterization.resized`): the canvas for padding and
full-frame prompts, the patch for patch prompts.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar

import torch
import torch.nn.functional as F

from backends.base import pixel_size
from backends.errors import ConfigurationError
from backends.registry import Registry


class Parameterization(ABC):
    """Maps a flat parameter vector to a (3, H, W) pattern of ``size`` = (H, W)."""

    name: str
    run_settings: ClassVar[dict[str, str]] = {}
    """Which run setting (``RunConfig`` field) sets each of its options; options not named keep their default."""

    def __init__(self, size: tuple[int, int]):
        self.size = pixel_size(size)

    @property
    @abstractmethod
    def dimension(self) -> int:
        """Length of the flat vector the optimizer sees."""

    @abstractmethod
    def expand(self, theta: torch.Tensor) -> torch.Tensor:
        """(d,) or (P, d) -> (3, H, W) or (P, 3, H, W)."""

    def config(self) -> dict:
        """What is needed to rebuild it (saved with a prompt); the size comes from the prompt."""
        return {"type": self.name}

    def resized(self, size: tuple[int, int]) -> Parameterization:
        """The same parameterization (same options, same seed) for a pattern of ``size``."""
        if tuple(size) == self.size:
            return self
        options = self.config()
        del options["type"]
        return type(self)(size, **options)


PARAMETERIZATIONS: Registry[type[Parameterization]] = Registry("parameterization")


@PARAMETERIZATIONS.register("full", "one parameter per pixel and channel (3*H*W dimensions)")
class FullResolution(Parameterization):

    def __init__(self, size: tuple[int, int]):
        super().__init__(size)

    @property
    def dimension(self) -> int:
        return 3 * self.size[0] * self.size[1]

    def expand(self, theta: torch.Tensor) -> torch.Tensor:
        return theta.reshape(*theta.shape[:-1], 3, *self.size)


def upsample(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(..., 3, g, g) -> (..., 3, H, W), bilinear with the grid's corners on the pattern's corners."""
    batch = grid.reshape(-1, *grid.shape[-3:])
    pattern = F.interpolate(batch, size=size, mode="bilinear", align_corners=True)
    return pattern.reshape(*grid.shape[:-3], 3, *size)


@PARAMETERIZATIONS.register("grid", "a coarse g x g x 3 grid upsampled bilinearly to the canvas (--grid g)")
class CoarseGrid(Parameterization):
    run_settings: ClassVar[dict[str, str]] = {"grid": "grid"}

    def __init__(self, size: tuple[int, int], grid: int = 8):
        super().__init__(size)
        if grid < 1:
            raise ConfigurationError(f"grid must be >= 1, got {grid}")
        self.grid = grid

    @property
    def dimension(self) -> int:
        return 3 * self.grid * self.grid

    def expand(self, theta: torch.Tensor) -> torch.Tensor:
        return upsample(theta.reshape(*theta.shape[:-1], 3, self.grid, self.grid), self.size)

    def config(self) -> dict:
        return {**super().config(), "grid": self.grid}


def dct_basis(n: int) -> torch.Tensor:
    """The orthonormal DCT-II matrix (n, n): row f is frequency f, ``D @ D.T = I`` (Ahmed et al. 1974).

    ``D[f, t] = a_f cos(pi (2t + 1) f / 2n)`` with ``a_0 = sqrt(1/n)`` and ``a_f = sqrt(2/n)`` otherwise.
    """
    t = torch.arange(n, dtype=torch.float64)
    f = t[:, None]
    basis = torch.cos(math.pi * (2 * t + 1) * f / (2 * n)) * math.sqrt(2.0 / n)
    basis[0] /= math.sqrt(2.0)
    return basis


@PARAMETERIZATIONS.register("dct", "the k x k lowest DCT frequencies of each channel (--dct-k k, 3*k*k dimensions)")
class LowFrequencyDCT(Parameterization):
    """theta holds DCT-II coefficients (3, k, k); the pattern is their inverse DCT, ``D_H[:k].T C D_W[:k]``.

    Scaled by sqrt(H W) / k so that a standard normal theta gives pixel values of unit variance on
    average over the pattern, as the grid and full parameterizations do.
    """

    run_settings: ClassVar[dict[str, str]] = {"k": "dct_k"}


    def __init__(self, size: tuple[int, int], k: int = 8):
        super().__init__(size)
        if not 1 <= k <= min(self.size):
            raise ConfigurationError(f"dct k must be between 1 and {min(self.size)} for a {self.size[0]}x{self.size[1]} "
                             f"pattern, got {k}")
        self.k = k
        self.rows = dct_basis(self.size[0])[:k].float()  # (k, H)
        self.columns = dct_basis(self.size[1])[:k].float()  # (k, W)
        self.scale = math.sqrt(self.size[0] * self.size[1]) / k

    @property
    def dimension(self) -> int:
        return 3 * self.k * self.k

    def expand(self, theta: torch.Tensor) -> torch.Tensor:
        coefficients = theta.reshape(*theta.shape[:-1], 3, self.k, self.k)
        rows, columns = self.rows.to(theta), self.columns.to(theta)
        return self.scale * (rows.T @ coefficients @ columns)

    def config(self) -> dict:
        return {**super().config(), "k": self.k}


@PARAMETERIZATIONS.register("subspace", "a seeded random projection of a small vector onto a 16 x 16 x 3 grid, "
                            "upsampled (Li et al. 2018; --subspace-dim d)")
class RandomSubspace(Parameterization):
    """``grid = A theta`` with a fixed Gaussian A (3 g g, d), then upsampled like ``grid``.

    Li et al. 2018, *Measuring the intrinsic dimension of objective landscapes*, eq. 2:
    optimization in a random d-dimensional subspace. A is drawn from ``seed`` (saved in the prompt
    file) with entries N(0, 1/d), so a standard normal theta gives grid values of unit variance.
    """

    run_settings: ClassVar[dict[str, str]] = {"dim": "subspace_dim", "seed": "seed"}  # its grid is not --grid


    def __init__(self, size: tuple[int, int], dim: int = 100, seed: int = 0, grid: int = 16):
        super().__init__(size)
        if grid < 1:
            raise ConfigurationError(f"subspace grid must be >= 1, got {grid}")
        if not 1 <= dim <= 3 * grid * grid:
            raise ConfigurationError(f"subspace dimension must be between 1 and {3 * grid * grid} (3*{grid}*{grid}), "
                             f"got {dim}")
        self.dim, self.seed, self.grid = dim, seed, grid
        generator = torch.Generator().manual_seed(seed)
        self.projection = torch.randn(3 * grid * grid, dim, generator=generator) / math.sqrt(dim)

    @property
    def dimension(self) -> int:
        return self.dim

    def expand(self, theta: torch.Tensor) -> torch.Tensor:
        coarse = theta @ self.projection.to(theta).T
        return upsample(coarse.reshape(*theta.shape[:-1], 3, self.grid, self.grid), self.size)

    def config(self) -> dict:
        return {**super().config(), "dim": self.dim, "seed": self.seed, "grid": self.grid}
