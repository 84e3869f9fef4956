"""The optimizer interface: ask/tell over flat numpy vectors.

``ask()`` returns every candidate (or perturbation) of one step as a (P, d) array, so that the run
scores them in one backend call on the same minibatch (common random numbers). ``tell()`` takes the
same array and its P losses. The whole object pickles: a resumed run continues exactly.

The public ``ask``/``tell``/``recommend`` are final and do the bookkeeping (as nevergrad's public
ask/tell do over its ``_internal_*`` hooks): the shapes are checked, ``tell`` must receive the rows
of the last ``ask``, and ``steps`` counts the tells. A new optimizer implements ``_ask``, ``_tell``,
``_recommend`` and ``candidates_per_step``, and says what the run must give it with class flags.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, final

import numpy as np

from backends.registry import Registry


class Optimizer(ABC):
    """Minimizes a noisy loss over R^d from function values only.

    Capabilities, read by the run (never the optimizer's name):

    - ``accepts_prior``: the run sets ``prior``, a function theta -> a direction to try (a local
      surrogate's negative gradient), where it has one.
    - ``needs_gradients`` and ``trains_on_surrogate`` are False for every search; the gradient methods
      (:mod:`blackbox_vp.optimizers.whitebox`) set them.
    """

    name: str  # set by the registry; an ng:<Name> instance sets its own
    accepts_prior: ClassVar[bool] = False
    needs_gradients: ClassVar[bool] = False
    trains_on_surrogate: ClassVar[bool] = False
    _asked: np.ndarray | None = None  # the rows of the last ask, until they are told (class default: old pickles)
    prior: Callable[[np.ndarray], np.ndarray] | None = None  # set by the run where accepts_prior (class default)

    def __init__(self, x0: np.ndarray, seed: int = 0):
        self.x0 = np.asarray(x0, dtype=np.float64).copy()
        self.dimension = len(self.x0)
        self.rng = np.random.default_rng(seed)
        self.steps = 0

    @property
    @abstractmethod
    def candidates_per_step(self) -> int:
        """P, the number of rows :meth:`ask` returns (the run sizes its budget plan with it)."""

    @final
    def ask(self) -> np.ndarray:
        """All candidates of the next step, (P, d); P may differ between steps. Asking again before a tell
        forgets the rows asked before."""
        candidates = np.asarray(self._ask(), dtype=np.float64)
        if candidates.ndim != 2 or candidates.shape[1] != self.dimension:
            raise RuntimeError(f"{type(self).__name__}._ask returned shape {candidates.shape}, not (P, {self.dimension})")
        self._asked = candidates.copy()
        return candidates

    @final
    def tell(self, candidates: np.ndarray, losses: np.ndarray) -> None:
        """Losses (P,) of the candidates returned by the last :meth:`ask`, those rows unchanged."""
        candidates, losses = np.asarray(candidates, dtype=np.float64), np.asarray(losses, dtype=np.float64)
        if self._asked is None:
            raise RuntimeError(f"{type(self).__name__}.tell without an ask before it")
        if candidates.shape != self._asked.shape or not np.array_equal(candidates, self._asked):
            raise RuntimeError(f"{type(self).__name__}.tell must receive the {len(self._asked)} rows of the last ask, "
                               f"unchanged (got shape {candidates.shape})")
        if losses.shape != (len(candidates),):
            raise RuntimeError(f"{type(self).__name__}.tell takes one loss per candidate: {len(candidates)}, "
                               f"got shape {losses.shape}")
        self._asked = None
        self._tell(candidates, losses)
        self.steps += 1

    @final
    def recommend(self) -> np.ndarray:
        """The current best guess of the minimizer, (d,), a copy."""
        return np.array(self._recommend(), dtype=np.float64)

    @abstractmethod
    def _ask(self) -> np.ndarray:
        """The candidates of the next step, (P, d)."""

    @abstractmethod
    def _tell(self, candidates: np.ndarray, losses: np.ndarray) -> None:
        """Update from the losses of the last asked candidates (checked to be those rows)."""

    @abstractmethod
    def _recommend(self) -> np.ndarray:
        """The current best guess, (d,)."""

    @property
    def step_size(self) -> float:
        """A scalar step size for the journal (NaN where the method has none)."""
        return float("nan")


# The searches, and the gradient methods beside them (blackbox_vp/optimizers/whitebox.py): classes with the flags above.
OPTIMIZERS: Registry[Any] = Registry("optimizer", given=("x0", "seed", "device", "prior"))
