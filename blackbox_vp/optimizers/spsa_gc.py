"""SPSA with gradient correction, as in BlackVIP (Oh et al. 2023, CVPR, *BlackVIP: Black-Box Visual
Prompting for Robust Transfer Learning*: the SPSA-GC update of its Sec. 3, exactly as its released
``trainers/blackvip.py`` computes it)."""

from __future__ import annotations

import numpy as np

from blackbox_vp.optimizers.base import OPTIMIZERS, Optimizer


@OPTIMIZERS.register("spsa-gc", "SPSA-GC (BlackVIP, Oh et al. 2023): K=5 averaged SPSA pairs and a Nesterov-like "
                                "correction, 2K candidates a step")
class SPSAGC(Optimizer):
    """k = 1, 2, ...:  a_k = a / (k + o)^alpha,  c_k = c / k^gamma;
    for s = 1..K: D_s with random signs and magnitudes U[0.5, 1),
    g_s = (L(w + c_k D_s) - L(w - c_k D_s)) / (2 c_k D_s) elementwise,  g = mean_s g_s;
    m = g (k = 1) else beta m + g;  w <- w - a_k (g + beta m).
    Defaults are BlackVIP's: o=1, c=0.01, a=0.01, alpha=0.4, gamma=0.1, beta=0.9, K=5.
    """


    def __init__(self, x0: np.ndarray, seed: int = 0, a: float = 0.01, c: float = 0.01, o: float = 1.0,
                 alpha: float = 0.4, gamma: float = 0.1, beta: float = 0.9, K: int = 5):
        super().__init__(x0, seed)
        self.a, self.c, self.o, self.alpha, self.gamma, self.beta, self.K = a, c, o, alpha, gamma, beta, K
        self.w = self.x0.copy()
        self.m = np.zeros(self.dimension)
        self._deltas: np.ndarray | None = None

    @property
    def k(self) -> int:
        """The step being taken, counted from 1."""
        return self.steps + 1

    @property
    def candidates_per_step(self) -> int:
        return 2 * self.K

    @property
    def step_size(self) -> float:
        return self.a / (self.k + self.o) ** self.alpha

    def perturbation_size(self) -> float:
        return self.c / self.k ** self.gamma

    def _ask(self) -> np.ndarray:
        magnitudes = self.rng.uniform(0.5, 1.0, size=(self.K, self.dimension))
        self._deltas = magnitudes * self.rng.choice([-1.0, 1.0], size=(self.K, self.dimension))
        ck = self.perturbation_size()
        return np.concatenate([self.w + ck * self._deltas, self.w - ck * self._deltas])  # rows s, then K + s

    def _tell(self, candidates: np.ndarray, losses: np.ndarray) -> None:
        assert self._deltas is not None, "tell follows the ask that drew the perturbations (Optimizer.tell checks)"
        ck = self.perturbation_size()
        differences = losses[:self.K] - losses[self.K:]
        gradient = (differences[:, None] / (2 * ck * self._deltas)).mean(axis=0)
        self.m = gradient if self.k == 1 else self.beta * self.m + gradient
        self.w = self.w - self.step_size * (gradient + self.beta * self.m)
        self._deltas = None

    def _recommend(self) -> np.ndarray:
        return self.w
