"""What every output mapping must do (:data:`blackbox_vp.mappings.MAPPINGS`)."""

from __future__ import annotations

import json

import numpy as np
import torch

from blackbox_vp.mappings import MAPPINGS, OutputMapping, mapping_from_state


class MappingContract:
    """Set ``name``, a registered mapping, and ``options`` if it takes some; ``classes_are_labels`` where the
    mapping needs as many classes as the backend has labels (``identity``)."""

    name: str
    options: dict = {}  # noqa: RUF012 (read, never changed)
    classes_are_labels = False
    labels = 30

    def fitted(self, images: int = 200, seed: int = 3) -> tuple[OutputMapping, torch.Tensor]:
        """The mapping fitted on random scores of ``images`` images; and those scores."""
        rng = np.random.default_rng(seed)
        classes = self.labels if self.classes_are_labels else 5
        scores = torch.tensor(rng.dirichlet(np.ones(self.labels), size=images))
        labels = torch.tensor(rng.integers(0, classes, images))
        return MAPPINGS.get(self.name)(**self.options).fit(scores, labels, classes), scores

    def test_probabilities_are_one_row_per_image_over_the_classes(self):
        mapping, scores = self.fitted()
        probabilities = mapping.probabilities(scores)
        classes = self.labels if self.classes_are_labels else 5
        assert probabilities.shape == (len(scores), classes) and torch.isfinite(probabilities).all()
        assert (probabilities >= 0).all()
        np.testing.assert_allclose(probabilities.sum(dim=1).numpy(), 1.0, rtol=1e-6)

    def test_its_state_survives_json_and_rebuilds_the_same_mapping(self):
        mapping, scores = self.fitted()
        state = json.loads(json.dumps(mapping.state()))
        assert state["type"] == self.name
        np.testing.assert_allclose(mapping_from_state(state).probabilities(scores).numpy(),
                                   mapping.probabilities(scores).numpy())

    def test_a_fit_on_a_few_images_stays_finite(self):
        mapping, scores = self.fitted(images=3)
        assert torch.isfinite(mapping.probabilities(scores)).all()
