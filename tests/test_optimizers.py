import math
import pickle

import numpy as np
import pytest

from blackbox_vp.optimizers import OPTIMIZERS, Optimizer, make_optimizer, search_names
from blackbox_vp.optimizers.nevergrad_any import NevergradAny
from blackbox_vp.optimizers.rge import RGE
from blackbox_vp.optimizers.spsa import SPSA
from blackbox_vp.optimizers.spsa_gc import SPSAGC
from blackbox_vp.testing.optimizers import run_steps, shifted_sphere

NAMES = search_names()
D = 10

# Constructor overrides where the paper's step sizes do not suit a unit-scale sphere.
SPHERE_OVERRIDES = {"rge": {"lr": 0.1, "lr_min": 0.001}}  # BlackVIP's lr0 = 10 diverges on ||x - t||^2
SPHERE_STEPS = {"cma": 40, "diag-cma": 40, "ng:OnePlusOne": 100}  # nevergrad steps are slower; 200 otherwise
SPHERE_FRACTION = {"spsa": 0.05, "nes": 0.01, "rge": 0.01, "spsa-gc": 0.01}  # 0.01 elsewhere too


def build(name: str, seed: int = 0, x0: np.ndarray | None = None, **overrides) -> Optimizer:
    return make_optimizer(name, np.zeros(D) if x0 is None else x0, seed=seed, **overrides)


@pytest.mark.parametrize("name", NAMES)
def test_converges_on_a_shifted_sphere(name):
    optimizer = build(name, **SPHERE_OVERRIDES.get(name, {}))
    start = shifted_sphere(optimizer.recommend())
    assert start == pytest.approx(shifted_sphere(np.zeros(D)))
    steps = SPHERE_STEPS.get(name, 200)
    run_steps(optimizer, steps)
    assert optimizer.steps == steps
    assert shifted_sphere(optimizer.recommend()) < SPHERE_FRACTION.get(name, 0.01) * start


@pytest.mark.parametrize("name", NAMES)
def test_ask_returns_candidates_per_step_rows_of_dimension_d(name):
    optimizer = build(name)
    for _ in range(3):
        candidates = optimizer.ask()
        assert candidates.shape == (optimizer.candidates_per_step, D)
        assert candidates.dtype == np.float64 and np.isfinite(candidates).all()
        optimizer.tell(candidates, shifted_sphere(candidates))
    assert optimizer.recommend().shape == (D,)


@pytest.mark.parametrize("name", NAMES)
def test_pickle_round_trip_mid_run_gives_the_same_next_ask(name):
    optimizer = build(name)
    run_steps(optimizer, 3)
    clone = pickle.loads(pickle.dumps(optimizer))
    assert clone.steps == optimizer.steps == 3
    np.testing.assert_array_equal(clone.recommend(), optimizer.recommend())
    np.testing.assert_array_equal(clone.ask(), optimizer.ask())


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_run_other_seed_other_run(name):
    a, b, c = run_steps(build(name, seed=5), 4), run_steps(build(name, seed=5), 4), run_steps(build(name, seed=6), 4)
    for left, right in zip(a, b, strict=True):
        np.testing.assert_array_equal(left, right)
    assert not all(np.array_equal(left, right) for left, right in zip(a, c, strict=True))


def test_the_candidates_per_step_of_each_method():
    assert build("spsa").candidates_per_step == 2
    assert build("spsa-gc").candidates_per_step == 10  # K = 5 pairs
    assert build("rge").candidates_per_step == 6  # pivot + q = 5
    assert build("nes").candidates_per_step == 20  # n = 10 pairs
    assert build("ng:OnePlusOne").candidates_per_step == 4 + int(3 * math.log(D))
    assert build("ng:OnePlusOne", num_workers=3).candidates_per_step == 3


def test_antithetic_rows_are_mirrored_about_the_iterate():
    w = np.linspace(-1, 1, D)
    spsa, gc, nes = build("spsa", x0=w), build("spsa-gc", x0=w), build("nes", x0=w)
    for optimizer, half in ((spsa, 1), (gc, 5), (nes, 10)):
        rows = optimizer.ask()
        np.testing.assert_allclose((rows[:half] + rows[half:]) / 2, np.tile(w, (half, 1)))
    np.testing.assert_allclose(np.abs(spsa.ask()[0] - w), np.full(D, 0.1))  # c_0 = c = 0.1, |D_i| = 1
    offsets = np.abs(gc.ask()[:5] - w) / 0.01  # c_1 = c = 0.01, |D_i| in [0.5, 1)
    assert offsets.min() >= 0.5 - 1e-9 and offsets.max() < 1.0
    rge = build("rge", x0=w).ask()
    np.testing.assert_array_equal(rge[0], w)
    np.testing.assert_allclose(np.linalg.norm(rge[1:] - w, axis=1), np.full(5, 0.01))  # beta * unit vectors


def test_gain_sequences_follow_the_papers():
    spsa = SPSA(np.zeros(D))
    assert spsa.step_size == pytest.approx(0.1 / 11 ** 0.602) and spsa.perturbation_size() == pytest.approx(0.1)
    gc = SPSAGC(np.zeros(D))
    assert gc.step_size == pytest.approx(0.01 / 2 ** 0.4) and gc.perturbation_size() == pytest.approx(0.01)
    rge = RGE(np.zeros(D))
    assert [rge.step_size] == [10.0]
    rge.steps = 3
    assert rge.step_size == pytest.approx(5.0)  # 10 / (1 + 3)^0.5
    rge.steps = 10_000
    assert rge.step_size == pytest.approx(0.1)  # floored at lr_min
    blackvip = RGE(np.zeros(D), decay_steps=100)
    blackvip.steps = 50
    assert blackvip.step_size == pytest.approx(9.9 * 0.5 ** 0.9 + 0.1)
    assert build("nes").step_size == 0.01


def test_updates_on_a_line_match_the_formulas():
    """In one dimension every perturbation estimates the slope of L(w) = 3 w exactly."""
    def line(x: np.ndarray) -> np.ndarray:
        return 3.0 * x[:, 0]

    def two_steps(optimizer: Optimizer) -> list[float]:
        points = []
        for _ in range(2):
            candidates = optimizer.ask()
            optimizer.tell(candidates, line(candidates))
            points.append(float(optimizer.recommend()[0]))
        return points

    a1, a2 = 0.1 / 11 ** 0.602, 0.1 / 12 ** 0.602
    assert two_steps(SPSA(np.zeros(1))) == pytest.approx([-3 * a1, -3 * (a1 + a2)])
    a1, a2 = 0.01 / 2 ** 0.4, 0.01 / 3 ** 0.4
    w1 = -a1 * (3 + 0.9 * 3)  # m = g at k = 1
    w2 = w1 - a2 * (3 + 0.9 * (0.9 * 3 + 3))  # m = beta m + g
    assert two_steps(SPSAGC(np.zeros(1))) == pytest.approx([w1, w2])
    w1 = -10.0 * 3  # (d / q) sum_j u_j (3 beta u_j) / beta = 3 with d = 1
    assert two_steps(RGE(np.zeros(1))) == pytest.approx([w1, w1 - 10 / 2 ** 0.5 * 3])


def test_ng_names_reach_any_nevergrad_optimizer_and_unknown_ones_are_refused():
    optimizer = make_optimizer("ng:TBPSA", np.zeros(D), seed=0)
    assert isinstance(optimizer, NevergradAny) and optimizer.name == "ng:TBPSA"
    assert "ng:TBPSA" in OPTIMIZERS and "ng:<...>" in OPTIMIZERS.names()
    with pytest.raises(ValueError, match="unknown nevergrad optimizer 'NoSuchThing'"):
        make_optimizer("ng:NoSuchThing", np.zeros(D))
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("no-such-thing", np.zeros(D))
