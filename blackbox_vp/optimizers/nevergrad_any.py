"""Any nevergrad optimizer by its registry name (Rapin & Teytaud 2018, *Nevergrad*), as ``ng:<Name>``."""

from __future__ import annotations

import math

import nevergrad as ng
import numpy as np

from blackbox_vp.optimizers.base import OPTIMIZERS, Optimizer


@OPTIMIZERS.register("ng:<Name>", "any nevergrad optimizer by registry name, e.g. ng:OnePlusOne, ng:TBPSA, "
                                  "ng:TwoPointsDE; 4 + floor(3 ln d) candidates a step (1 for sequential ones)")
class NevergradAny(Optimizer):
    """Nevergrad's own ask/tell with ``num_workers`` = candidates per step.

    The default per-step count is CMA-ES's population 4 + floor(3 ln d) (Hansen 2016, eq. 48), so a
    step costs what a ``cma`` step costs; optimizers that nevergrad marks sequential get 1.
    """

    def __init__(self, x0: np.ndarray, seed: int = 0, optimizer: str = "OnePlusOne", num_workers: int | None = None):
        super().__init__(x0, seed)
        if optimizer not in ng.optimizers.registry:
            raise ValueError(f"unknown nevergrad optimizer {optimizer!r}; see nevergrad.optimizers.registry")
        self.name = f"ng:{optimizer}"
        family = ng.optimizers.registry[optimizer]
        if num_workers is None:
            sequential = getattr(family, "no_parallelization", False)
            num_workers = 1 if sequential else 4 + int(3 * math.log(self.dimension))
        self.num_workers = num_workers
        parametrization = ng.p.Array(init=self.x0)
        parametrization.random_state = np.random.RandomState(seed)
        self.optimizer = family(parametrization, budget=None, num_workers=num_workers)
        self._pending: list = []

    @property
    def candidates_per_step(self) -> int:
        return self.num_workers

    def ask(self) -> np.ndarray:
        self._pending = [self.optimizer.ask() for _ in range(self.num_workers)]
        return np.stack([candidate.value for candidate in self._pending])

    def tell(self, candidates: np.ndarray, losses: np.ndarray) -> None:
        for candidate, loss in zip(self._pending, losses, strict=True):
            self.optimizer.tell(candidate, float(loss))
        self._pending = []
        self.steps += 1

    def recommend(self) -> np.ndarray:
        return np.asarray(self.optimizer.provide_recommendation().value, dtype=np.float64)
