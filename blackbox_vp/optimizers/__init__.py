"""Optimizers, one per file; importing this package registers them all."""

from blackbox_vp.optimizers import cma, guided, nes, nevergrad_any, rge, spsa, spsa_gc  # noqa: F401
from blackbox_vp.optimizers.base import OPTIMIZERS, Optimizer, make_optimizer

__all__ = ["OPTIMIZERS", "Optimizer", "make_optimizer"]
