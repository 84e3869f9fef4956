"""Shared fixtures: small real objects (a toy backend, small data), never mocks of our own code."""

from __future__ import annotations

import numpy as np
import pytest

from backends.toy import ToyBackend


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
