"""What every loss on mapped class probabilities must do (:data:`blackbox_vp.losses.LOSSES`)."""

from __future__ import annotations

import torch

from blackbox_vp.losses import LOSSES


class LossContract:
    """Set ``name``, a registered loss."""

    name: str

    def loss(self, probabilities: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return LOSSES.get(self.name)(probabilities, labels)

    def test_it_gives_one_finite_value_per_image(self):
        probabilities = torch.softmax(torch.randn(7, 4, generator=torch.Generator().manual_seed(0)), dim=1)
        values = self.loss(probabilities.double(), torch.tensor([0, 1, 2, 3, 0, 1, 2]))
        assert values.shape == (7,) and torch.isfinite(values).all()

    def test_a_confident_right_answer_costs_less_than_a_wrong_one(self):
        right = torch.tensor([[0.97, 0.01, 0.01, 0.01]], dtype=torch.float64)
        wrong = torch.tensor([[0.01, 0.97, 0.01, 0.01]], dtype=torch.float64)
        label = torch.tensor([0])
        assert self.loss(right, label).item() < self.loss(wrong, label).item()

    def test_zero_probabilities_stay_finite_and_give_gradients(self):
        probabilities = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64, requires_grad=True)
        values = self.loss(probabilities, torch.tensor([0, 0]))
        assert torch.isfinite(values).all()
        values.sum().backward()
        assert torch.isfinite(probabilities.grad).all()
