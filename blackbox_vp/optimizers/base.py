"""The optimizer interface: ask/tell over flat numpy vectors.

``ask()`` returns every candidate (or perturbation) of one step as a (P, d) array, so that the run
scores them in one backend call on the same minibatch (common random numbers). ``tell()`` takes the
same array and its P losses. The whole object pickles: a resumed run continues exactly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from blackbox_vp.registry import Registry


class Optimizer(ABC):
    """Minimizes a noisy loss over R^d from function values only."""

    name: str

    def __init__(self, x0: np.ndarray, seed: int = 0):
        self.x0 = np.asarray(x0, dtype=np.float64).copy()
        self.dimension = len(self.x0)
        self.rng = np.random.default_rng(seed)
        self.steps = 0

    @property
    @abstractmethod
    def candidates_per_step(self) -> int:
        """P, the number of rows :meth:`ask` returns (the run sizes its budget plan with it)."""

    @abstractmethod
    def ask(self) -> np.ndarray:
        """All candidates of the next step, (P, d); P may differ between steps."""

    @abstractmethod
    def tell(self, candidates: np.ndarray, losses: np.ndarray) -> None:
        """Losses (P,) of the candidates returned by the last :meth:`ask`."""

    @abstractmethod
    def recommend(self) -> np.ndarray:
        """The current best guess of the minimizer, (d,)."""

    @property
    def step_size(self) -> float:
        """A scalar step size for the journal (NaN where the method has none)."""
        return float("nan")


OPTIMIZERS: Registry[Optimizer] = Registry("optimizer")


def make_optimizer(name: str, x0: np.ndarray, seed: int = 0) -> Optimizer:
    """Build a registered optimizer (importing the package registers all of them)."""
    import blackbox_vp.optimizers  # noqa: F401  (registers every optimizer)

    if name.startswith("ng:"):  # any nevergrad optimizer by its registry name (nevergrad_any.py)
        return OPTIMIZERS.get("ng:<Name>")(x0, seed=seed, optimizer=name[3:])
    return OPTIMIZERS.get(name)(x0, seed=seed)
