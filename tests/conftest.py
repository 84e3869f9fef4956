"""Shared fixtures: small real objects (a toy backend, small data), never mocks of our own code."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch loads: 2 threads on 2 loaded cores thrash

import numpy as np
import pytest
import torch
from hypothesis import settings

from backends.toy import ToyBackend

torch.set_num_threads(1)  # the same in-process and in the subprocesses the resume tests start

# No per-example deadline: a property test checks values, not speed (on a loaded 2-core machine the
# default 200 ms deadline failed test_config's round trip), and no example database in the checkout.
settings.register_profile("bbvp", deadline=None, database=None)
settings.load_profile("bbvp")


@pytest.fixture
def toy() -> ToyBackend:
    return ToyBackend()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def reference():
    """The real EfficientNet-Lite0 backend (loaded once per test session)."""
    from backends import make_backend

    return make_backend("reference")
