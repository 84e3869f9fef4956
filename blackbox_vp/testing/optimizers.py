"""What every ask/tell optimizer must do (:class:`blackbox_vp.optimizers.Optimizer`)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from blackbox_vp.optimizers import Optimizer, make_optimizer

DIMENSION = 6


def shifted_sphere(candidates: np.ndarray) -> np.ndarray:
    """A fixed problem: ||x - t||^2, t a seeded normal vector."""
    target = np.random.default_rng(123).normal(size=candidates.shape[-1])
    return ((candidates - target) ** 2).sum(axis=-1)


def run_steps(optimizer: Optimizer, steps: int) -> list[np.ndarray]:
    """Ask and tell ``steps`` times on the sphere; the candidates asked."""
    asked = []
    for _ in range(steps):
        candidates = optimizer.ask()
        asked.append(candidates)
        optimizer.tell(candidates, shifted_sphere(candidates))
    return asked


class OptimizerContract:
    """Set ``name`` (a registered optimizer) or override :meth:`make`; ``sphere_options``: the options under
    which it descends a unit-scale sphere (a paper's step size may suit another scale)."""

    name: str
    sphere_options: dict = {}  # noqa: RUF012 (read, never changed)

    def make(self, seed: int = 0, x0: np.ndarray | None = None, **options: object) -> Optimizer:
        return make_optimizer(self.name, np.zeros(DIMENSION) if x0 is None else x0, seed=seed, **options)

    def test_ask_gives_candidates_per_step_rows_of_the_dimension(self):
        optimizer = self.make()
        for _ in range(3):
            candidates = optimizer.ask()
            assert candidates.shape == (optimizer.candidates_per_step, DIMENSION)
            assert np.all(np.isfinite(candidates))
            optimizer.tell(candidates, shifted_sphere(candidates))

    def test_steps_count_the_tells(self):
        optimizer = self.make()
        run_steps(optimizer, 4)
        assert optimizer.steps == 4

    def test_tell_refuses_rows_that_are_not_the_last_ask(self):
        optimizer = self.make()
        with pytest.raises(RuntimeError, match="without an ask"):
            optimizer.tell(np.zeros((optimizer.candidates_per_step, DIMENSION)), np.zeros(optimizer.candidates_per_step))
        candidates = optimizer.ask()
        with pytest.raises(RuntimeError, match="rows of the last ask"):
            optimizer.tell(candidates + 1.0, shifted_sphere(candidates))
        with pytest.raises(RuntimeError, match="one loss per candidate"):
            optimizer.tell(candidates, np.zeros(len(candidates) + 1))
        optimizer.tell(candidates, shifted_sphere(candidates))  # the right rows are still taken
        assert optimizer.steps == 1

    def test_the_same_seed_asks_the_same_candidates(self):
        first, second = run_steps(self.make(seed=5), 3), run_steps(self.make(seed=5), 3)
        for a, b in zip(first, second, strict=True):
            np.testing.assert_array_equal(a, b)

    def test_recommend_starts_at_x0_and_is_a_copy(self):
        x0 = np.linspace(-0.5, 0.5, DIMENSION)
        optimizer = self.make(x0=x0)
        recommended = optimizer.recommend()
        np.testing.assert_allclose(recommended, x0)
        recommended += 1.0
        np.testing.assert_allclose(optimizer.recommend(), x0)

    def test_a_pickled_optimizer_continues_exactly(self):
        """What a resumed run relies on: the checkpoint pickles the optimizer between steps."""
        optimizer = self.make(seed=3)
        run_steps(optimizer, 2)
        restored = pickle.loads(pickle.dumps(optimizer))
        for a, b in zip(run_steps(optimizer, 3), run_steps(restored, 3), strict=True):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(optimizer.recommend(), restored.recommend())
        assert restored.steps == optimizer.steps == 5

    def test_it_makes_progress_on_the_sphere(self):
        optimizer = self.make(**self.sphere_options)
        start = shifted_sphere(optimizer.recommend())
        run_steps(optimizer, 30)
        assert shifted_sphere(optimizer.recommend()) < start
