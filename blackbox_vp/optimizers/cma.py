"""CMA-ES (Hansen & Ostermeier 2001; Hansen 2016, *The CMA Evolution Strategy: A Tutorial*) via nevergrad."""

from __future__ import annotations

import math

import nevergrad as ng
import numpy as np

from blackbox_vp.optimizers.base import OPTIMIZERS
from blackbox_vp.optimizers.nevergrad_base import NevergradOptimizer


@OPTIMIZERS.register("cma", "CMA-ES, full covariance (nevergrad); O(d^2) memory, for d up to a few thousand")
class CMA(NevergradOptimizer):
    """One step asks the whole population, lambda = 4 + floor(3 ln d) (Hansen 2016, eq. 48).

    ``sigma`` is the initial step size in the prompt's unconstrained space, where tanh saturates
    around |x| = 2.
    """

    diagonal = False

    def __init__(self, x0: np.ndarray, seed: int = 0, sigma: float = 0.5, popsize: int | None = None):
        self.popsize = popsize or 4 + int(3 * math.log(len(x0)))
        family = ng.optimizers.ParametrizedCMA(scale=sigma, popsize=self.popsize, diagonal=self.diagonal)
        super().__init__(x0, seed, family, self.popsize)

    @property
    def step_size(self) -> float:
        es = getattr(self.optimizer, "_es", None)
        return float(getattr(es, "sigma", float("nan"))) if es is not None else float("nan")


@OPTIMIZERS.register("diag-cma", "CMA-ES with a diagonal covariance (nevergrad); O(d) memory, any d")
class DiagonalCMA(CMA):
    diagonal = True
