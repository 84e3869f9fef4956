"""SPSA (Spall 1992, IEEE TAC 37(3); gains from Spall 1998, *Implementation of the simultaneous
perturbation algorithm for stochastic optimization*, IEEE TAES 34(3))."""

from __future__ import annotations

import numpy as np

from blackbox_vp.optimizers.base import OPTIMIZERS, Optimizer


@OPTIMIZERS.register("spsa", "SPSA (Spall 1992/1998): two-sided Rademacher perturbation, 2 candidates a step")
class SPSA(Optimizer):
    """Spall 1998, Sec. III, Steps 1-4 (the gains, Bernoulli +-1 perturbation, two-sided estimate, update):

    a_k = a / (k + 1 + A)^alpha,  c_k = c / (k + 1)^gamma  (k = 0, 1, ...; alpha 0.602, gamma 0.101),
    g_k = (L(w + c_k D) - L(w - c_k D)) / (2 c_k D)  elementwise, D Rademacher,  w <- w - a_k g_k.

    Spall gives rules, not numbers, for a, c and A: A about 10% of the expected iterations (100 here),
    c about the noise level of L, a so that a_0 |g_0| is the smallest change wanted early on.
    """


    def __init__(self, x0: np.ndarray, seed: int = 0, a: float = 0.1, c: float = 0.1, A: float = 10.0,
                 alpha: float = 0.602, gamma: float = 0.101):
        super().__init__(x0, seed)
        self.a, self.c, self.A, self.alpha, self.gamma = a, c, A, alpha, gamma
        self.w = self.x0.copy()
        self._delta: np.ndarray | None = None

    @property
    def candidates_per_step(self) -> int:
        return 2

    @property
    def step_size(self) -> float:
        return self.a / (self.steps + 1 + self.A) ** self.alpha

    def perturbation_size(self) -> float:
        return self.c / (self.steps + 1) ** self.gamma

    def _ask(self) -> np.ndarray:
        self._delta = self.rng.choice([-1.0, 1.0], size=self.dimension)
        ck = self.perturbation_size()
        return np.stack([self.w + ck * self._delta, self.w - ck * self._delta])

    def _tell(self, candidates: np.ndarray, losses: np.ndarray) -> None:
        assert self._delta is not None, "tell follows the ask that drew the perturbation (Optimizer.tell checks)"
        ck = self.perturbation_size()
        gradient = (losses[0] - losses[1]) / (2 * ck * self._delta)
        self.w = self.w - self.step_size * gradient
        self._delta = None

    def _recommend(self) -> np.ndarray:
        return self.w
