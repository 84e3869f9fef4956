"""Any nevergrad optimizer by its registry name (Rapin & Teytaud 2018, *Nevergrad*), as ``ng:<Name>`` (``ng:OnePlusOne``)."""

from __future__ import annotations

import math

import nevergrad as ng
import numpy as np

from backends.errors import ConfigurationError
from blackbox_vp.optimizers.base import OPTIMIZERS
from blackbox_vp.optimizers.nevergrad_base import NevergradOptimizer


@OPTIMIZERS.register("ng:", "any nevergrad optimizer by registry name, e.g. ng:OnePlusOne, ng:TBPSA, "
                                  "ng:TwoPointsDE; 4 + floor(3 ln d) candidates a step (1 for sequential ones)",
                     example="ng:OnePlusOne")
class NevergradAny(NevergradOptimizer):
    """Nevergrad's own ask/tell with ``num_workers`` = candidates per step.

    The default per-step count is CMA-ES's population 4 + floor(3 ln d) (Hansen 2016, eq. 48), so a
    step costs what a ``cma`` step costs; optimizers that nevergrad marks sequential get 1.
    """

    def __init__(self, optimizer: str, x0: np.ndarray, seed: int = 0, num_workers: int | None = None):
        if optimizer not in ng.optimizers.registry:
            raise ConfigurationError(f"unknown nevergrad optimizer {optimizer!r}; see nevergrad.optimizers.registry")
        family = ng.optimizers.registry[optimizer]
        if num_workers is None:
            sequential = getattr(family, "no_parallelization", False)
            num_workers = 1 if sequential else 4 + int(3 * math.log(len(x0)))
        super().__init__(x0, seed, family, num_workers)
        self.name = f"ng:{optimizer}"
