"""The bridge to nevergrad (Rapin & Teytaud 2018): its ask/tell, one whole step of candidates at a time."""

from __future__ import annotations

import nevergrad as ng
import numpy as np

from blackbox_vp.optimizers.base import Optimizer


class NevergradOptimizer(Optimizer):
    """Wraps a nevergrad optimizer family; each step asks ``num_workers`` candidates, then tells them all."""

    def __init__(self, x0: np.ndarray, seed: int, family, num_workers: int):
        super().__init__(x0, seed)
        self.num_workers = num_workers
        parametrization = ng.p.Array(init=self.x0)
        parametrization.random_state = np.random.RandomState(seed)
        self.optimizer = family(parametrization, budget=None, num_workers=num_workers)
        self._pending: list = []

    @property
    def candidates_per_step(self) -> int:
        return self.num_workers

    def _ask(self) -> np.ndarray:
        self._pending = [self.optimizer.ask() for _ in range(self.num_workers)]
        return np.stack([candidate.value for candidate in self._pending])

    def _tell(self, candidates: np.ndarray, losses: np.ndarray) -> None:
        for candidate, loss in zip(self._pending, losses, strict=True):
            self.optimizer.tell(candidate, float(loss))
        self._pending = []

    def _recommend(self) -> np.ndarray:
        return np.asarray(self.optimizer.provide_recommendation().value, dtype=np.float64)
