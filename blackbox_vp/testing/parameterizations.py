"""What every parameterization must do (:data:`blackbox_vp.parameterizations.PARAMETERIZATIONS`)."""

from __future__ import annotations

import torch

from blackbox_vp.parameterizations import PARAMETERIZATIONS, Parameterization

SIZE = (32, 24)


class ParameterizationContract:
    """Set ``name``, a registered parameterization, and ``options`` if it takes some."""

    name: str
    options: dict = {}  # noqa: RUF012 (read, never changed)

    def make(self, size: tuple[int, int] = SIZE) -> Parameterization:
        return PARAMETERIZATIONS.get(self.name)(size, **self.options)

    def test_a_vector_or_a_batch_of_them_becomes_patterns_of_its_size(self):
        parameterization = self.make()
        theta = torch.randn(4, parameterization.dimension, generator=torch.Generator().manual_seed(0))
        batch = parameterization.expand(theta)
        assert batch.shape == (4, 3, *SIZE) and torch.isfinite(batch).all()
        torch.testing.assert_close(parameterization.expand(theta[1]), batch[1])

    def test_its_config_rebuilds_the_same_patterns(self):
        parameterization = self.make()
        config = parameterization.config()
        assert config["type"] == self.name
        rebuilt = PARAMETERIZATIONS.get(config.pop("type"))(SIZE, **config)
        theta = torch.randn(parameterization.dimension, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(rebuilt.expand(theta), parameterization.expand(theta))

    def test_resized_keeps_its_options_at_another_size(self):
        resized = self.make().resized((16, 16))
        assert resized.size == (16, 16) and resized.config() == self.make((16, 16)).config()
        theta = torch.zeros(resized.dimension)
        assert resized.expand(theta).shape == (3, 16, 16)
