"""Optimizers, one per file; importing this package registers them all."""

from blackbox_vp.optimizers import (  # noqa: F401
    cma,
    guided,
    nes,
    nevergrad_any,
    rge,
    spsa,
    spsa_gc,
    whitebox,
)
from blackbox_vp.optimizers.base import OPTIMIZERS, Optimizer


def make_optimizer(name: str, x0, seed: int = 0, **options) -> Optimizer:
    """Build a registered optimizer; ``ng:<Name>`` is any nevergrad optimizer by its name (``nevergrad_any.py``)."""
    return OPTIMIZERS.get(name)(x0, seed=seed, **options)


def search_names() -> list[str]:
    """The ask/tell searches by name (not the gradient methods), ``ng:<...>`` given as ``ng:OnePlusOne``."""
    examples = [OPTIMIZERS.example(name) for name in OPTIMIZERS.names()]
    return [name for name in examples if not OPTIMIZERS.factory_of(name).needs_gradients]


__all__ = ["OPTIMIZERS", "Optimizer", "make_optimizer", "search_names"]
