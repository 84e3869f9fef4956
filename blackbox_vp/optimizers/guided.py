"""Ours: a (1 + lambda) search along a surrogate's gradient and random directions, self-scaling.

Each step scores, on one minibatch (common random numbers), the current point and candidates
``theta + eta_i d_i``: the prior direction d_0 = -grad of a local surrogate (P-RGF's prior, Cheng et
al. 2019) at a ladder of step sizes {eta/2, eta, 2 eta}, and random unit directions orthogonal to
it (so a useless prior costs little). The best candidate replaces theta only if it beats theta on
the same images; eta follows the winner's scale (x2 / x1 / x0.5) and shrinks when nothing wins, a
one-fifth-success style rule (Rechenberg 1973) that needs no per-data-set step size. Without a prior
(no surrogate), every direction is random.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from blackbox_vp.optimizers.base import OPTIMIZERS, Optimizer

LADDER = (0.5, 1.0, 2.0)
RANDOM_DIRECTIONS = 2  # random directions per step, besides the prior's ladder


@OPTIMIZERS.register("guided", "ours: (1+lambda) line search along a surrogate's gradient + random directions, self-scaling")
class Guided(Optimizer):
    accepts_prior = True

    def __init__(self, x0: np.ndarray, seed: int = 0, eta: float = 0.5, random_directions: int = RANDOM_DIRECTIONS,
                 prior: Callable[[np.ndarray], np.ndarray] | None = None):
        super().__init__(x0, seed)
        self.theta = self.x0.copy()
        self.eta = eta * np.sqrt(self.dimension) / 8.0  # a step of RMS eta/8 per coordinate
        self.random_directions = random_directions
        self.prior = prior
        self._scales: list[float] = []

    @property
    def candidates_per_step(self) -> int:
        return 1 + len(LADDER) + self.random_directions

    def _unit(self, vector: np.ndarray) -> np.ndarray:
        norm = np.linalg.norm(vector)
        return vector / norm if norm > 0 else vector

    def _ask(self) -> np.ndarray:
        prior = self._unit(self.prior(self.theta)) if self.prior else self._unit(self.rng.normal(size=self.dimension))
        rows, self._scales = [self.theta], [0.0]
        for scale in LADDER:
            rows.append(self.theta + scale * self.eta * prior)
            self._scales.append(scale)
        for _ in range(self.random_directions):
            u = self.rng.normal(size=self.dimension)
            u = self._unit(u - (u @ prior) * prior)
            rows.append(self.theta + self.eta * u)
            self._scales.append(1.0)
        return np.stack(rows)

    def _tell(self, candidates: np.ndarray, losses: np.ndarray) -> None:
        best = int(np.argmin(losses))
        if best > 0 and losses[best] < losses[0]:
            self.theta = candidates[best].copy()
            self.eta *= 2.0 if self._scales[best] == LADDER[-1] else (0.5 if self._scales[best] == LADDER[0] else 1.0)
        else:
            self.eta *= 0.5 ** 0.5

    def _recommend(self) -> np.ndarray:
        return self.theta

    @property
    def step_size(self) -> float:
        return float(self.eta)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["prior"] = None  # a torch model; the run attaches it again on resume
        return state
