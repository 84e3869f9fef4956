"""Shared fixtures: small real objects (a toy backend, small data), never mocks of our own code."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch loads: 2 threads on 2 loaded cores thrash

import numpy as np
import pytest
import torch

from backends.toy import ToyBackend

torch.set_num_threads(1)  # the same in-process and in the subprocesses the resume tests start


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
