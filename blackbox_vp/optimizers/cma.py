"""CMA-ES (Hansen & Ostermeier 2001; Hansen 2016, *The CMA Evolution Strategy: A Tutorial*) via nevergrad."""

from __future__ import annotations

import math

import nevergrad as ng
import numpy as np

from blackbox_vp.optimizers.base import OPTIMIZERS, Optimizer


@OPTIMIZERS.register("cma", "CMA-ES, full covariance (nevergrad); O(d^2) memory, for d up to a few thousand")
class CMA(Optimizer):
    """One step asks the whole population, lambda = 4 + floor(3 ln d) (Hansen 2016, eq. 48).

    ``sigma`` is the initial step size in the prompt's unconstrained space, where tanh saturates
    around |x| = 2.
    """

    name = "cma"
    diagonal = False

    def __init__(self, x0: np.ndarray, seed: int = 0, sigma: float = 0.5, popsize: int | None = None):
        super().__init__(x0, seed)
        self.popsize = popsize or 4 + int(3 * math.log(self.dimension))
        parametrization = ng.p.Array(init=self.x0)
        parametrization.random_state = np.random.RandomState(seed)
        family = ng.optimizers.ParametrizedCMA(scale=sigma, popsize=self.popsize, diagonal=self.diagonal)
        self.optimizer = family(parametrization, budget=None, num_workers=self.popsize)
        self._pending: list = []

    @property
    def candidates_per_step(self) -> int:
        return self.popsize

    def ask(self) -> np.ndarray:
        self._pending = [self.optimizer.ask() for _ in range(self.popsize)]
        return np.stack([candidate.value for candidate in self._pending])

    def tell(self, candidates: np.ndarray, losses: np.ndarray) -> None:
        for candidate, loss in zip(self._pending, losses, strict=True):
            self.optimizer.tell(candidate, float(loss))
        self._pending = []
        self.steps += 1

    def recommend(self) -> np.ndarray:
        return np.asarray(self.optimizer.provide_recommendation().value, dtype=np.float64)

    @property
    def step_size(self) -> float:
        es = getattr(self.optimizer, "_es", None)
        return float(getattr(es, "sigma", float("nan"))) if es is not None else float("nan")


@OPTIMIZERS.register("diag-cma", "CMA-ES with a diagonal covariance (nevergrad); O(d) memory, any d")
class DiagonalCMA(CMA):
    name = "diag-cma"
    diagonal = True
