"""Random gradient estimate of BAR (Tsai, Chen & Ho 2020, ICML, *Transfer Learning without Knowing:
Reprogramming Black-box Machine Learning Models with Scarce Data and Limited Resources*, eq. (3)),
as BlackVIP (Oh et al. 2023) re-implements it in its released ``trainers/reprogramming.py``."""

from __future__ import annotations

import numpy as np

from blackbox_vp.optimizers.base import OPTIMIZERS, Optimizer


@OPTIMIZERS.register("rge", "RGE (BAR, Tsai et al. 2020): one-sided estimate on q=5 unit-sphere directions, "
                            "q+1 candidates a step")
class RGE(Optimizer):
    """g = (d / q) sum_j u_j (L(w + beta u_j) - L(w)) / beta, u_j uniform on the unit sphere;
    w <- w - lr_k g. Defaults q=5, beta=0.01 and lr from 10 down to 0.1 are BlackVIP's BAR settings.

    BlackVIP decays lr_k = (lr0 - lr_min) (1 - k/K)^0.9 + lr_min over K = 90% of the known number of
    steps; the run does not tell an optimizer its horizon, so with ``decay_steps=None`` (the default)
    the horizon-free polynomial decay lr_k = max(lr_min, lr0 / (1 + k)^0.5) is used (the k^-1/2 rate
    of zeroth-order SGD, Ghadimi & Lan 2013, SIAM J. Optim. 23(4)); give ``decay_steps`` = K for BlackVIP's.
    """


    def __init__(self, x0: np.ndarray, seed: int = 0, q: int = 5, beta: float = 0.01, lr: float = 10.0,
                 lr_min: float = 0.1, power: float = 0.5, decay_steps: int | None = None):
        super().__init__(x0, seed)
        self.q, self.beta, self.lr, self.lr_min, self.power, self.decay_steps = q, beta, lr, lr_min, power, decay_steps
        self.w = self.x0.copy()
        self._directions: np.ndarray | None = None

    @property
    def candidates_per_step(self) -> int:
        return 1 + self.q

    @property
    def step_size(self) -> float:
        if self.decay_steps is not None:
            progress = min(self.steps, self.decay_steps) / self.decay_steps
            return (self.lr - self.lr_min) * (1 - progress) ** 0.9 + self.lr_min
        return max(self.lr_min, self.lr / (1 + self.steps) ** self.power)

    def _ask(self) -> np.ndarray:
        u = self.rng.standard_normal((self.q, self.dimension))
        self._directions = u / np.linalg.norm(u, axis=1, keepdims=True)
        return np.concatenate([self.w[None, :], self.w + self.beta * self._directions])  # pivot first

    def _tell(self, candidates: np.ndarray, losses: np.ndarray) -> None:
        differences = (losses[1:] - losses[0]) / self.beta
        gradient = (self.dimension / self.q) * (differences @ self._directions)
        self.w = self.w - self.step_size * gradient
        self._directions = None

    def _recommend(self) -> np.ndarray:
        return self.w
