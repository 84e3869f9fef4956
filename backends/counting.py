"""A wrapper that counts every image sent and enforces a hard budget."""

from __future__ import annotations

import numpy as np

from backends.base import Backend, BackendWrapper
from backends.errors import BudgetExhausted, ConfigurationError


class CountingBackend(BackendWrapper):
    """Counts images and calls passed to ``inner``; refuses a call that would exceed ``budget``.

    ``budget=None`` counts without a limit. The count covers images that actually reached the inner
    backend; a refused call sends nothing and counts nothing.
    """

    def __init__(self, inner: Backend, budget: int | None = None):
        super().__init__(inner)
        if budget is not None and budget < 0:
            raise ConfigurationError(f"budget must be >= 0 images, got {budget}")
        self.budget = budget
        self.images_sent = 0
        self.calls = 0

    @property
    def remaining(self) -> int | None:
        """Images still allowed, or None without a budget."""
        return None if self.budget is None else self.budget - self.images_sent

    def fits(self, count: int) -> bool:
        """Whether a query of ``count`` images would be allowed."""
        return self.budget is None or self.images_sent + count <= self.budget

    def _refuse_beyond_budget(self, count: int) -> None:
        """Raise :class:`BudgetExhausted` where ``count`` more images would exceed the budget (never without one)."""
        if self.budget is not None and not self.fits(count):
            raise BudgetExhausted(count, self.images_sent, self.budget)

    def query(self, images: np.ndarray) -> np.ndarray:
        count = len(images)
        self._refuse_beyond_budget(count)
        scores = self.inner.query(images)
        self.images_sent += count
        self.calls += 1
        return scores

    def charge(self, count: int) -> None:
        """Count ``count`` images processed outside :meth:`query` (white-box forwards) against the budget."""
        self._refuse_beyond_budget(count)
        self.images_sent += count
