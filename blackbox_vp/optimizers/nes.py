"""Antithetic NES gradient estimate (Wierstra et al. 2014, JMLR 15, *Natural Evolution Strategies*,
search gradient with mirrored samples; Ilyas et al. 2018, ICML, *Black-box Adversarial Attacks with Limited
Queries and Information*, Algorithm 1) with a plain SGD step."""

from __future__ import annotations

import numpy as np

from blackbox_vp.optimizers.base import OPTIMIZERS, Optimizer


@OPTIMIZERS.register("nes", "NES (Wierstra et al. 2014; Ilyas et al. 2018): n=10 antithetic Gaussian pairs and "
                            "an SGD step, 2n candidates a step")
class NES(Optimizer):
    """g = (1/n) sum_j eps_j (L(w + s eps_j) - L(w - s eps_j)) / (2 s), eps_j ~ N(0, I);  w <- w - lr g.

    The default lr = s^2 = 0.01 is the NES natural-gradient step for the mean with eta_mu = 1
    (Wierstra et al. 2014: the Fisher matrix of N(w, s^2 I) w.r.t. w is I / s^2).
    """


    def __init__(self, x0: np.ndarray, seed: int = 0, n: int = 10, s: float = 0.1, lr: float = 0.01):
        super().__init__(x0, seed)
        self.n, self.s, self.lr = n, s, lr
        self.w = self.x0.copy()
        self._noise: np.ndarray | None = None

    @property
    def candidates_per_step(self) -> int:
        return 2 * self.n

    @property
    def step_size(self) -> float:
        return self.lr

    def _ask(self) -> np.ndarray:
        self._noise = self.rng.standard_normal((self.n, self.dimension))
        return np.concatenate([self.w + self.s * self._noise, self.w - self.s * self._noise])  # rows j, then n + j

    def _tell(self, candidates: np.ndarray, losses: np.ndarray) -> None:
        differences = (losses[:self.n] - losses[self.n:]) / (2 * self.s)
        gradient = differences @ self._noise / self.n
        self.w = self.w - self.lr * gradient
        self._noise = None

    def _recommend(self) -> np.ndarray:
        return self.w
