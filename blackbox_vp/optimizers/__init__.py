"""Optimizers, one per file; importing this package registers them all."""

from blackbox_vp.optimizers import cma  # noqa: F401
from blackbox_vp.optimizers.base import OPTIMIZERS, Optimizer, make_optimizer

__all__ = ["OPTIMIZERS", "Optimizer", "make_optimizer"]
