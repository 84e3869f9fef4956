import numpy as np
import torch

from blackbox_vp.losses import cross_entropy
from blackbox_vp.mappings import FrequencyMapping


def test_frequency_mapping_is_one_to_one_and_follows_the_counts():
    # Classes 0 and 1 both prefer label 2; class 0 has more votes, so class 1 takes its runner-up.
    scores = torch.tensor([
        [0.1, 0.1, 0.8, 0.0],  # class 0
        [0.1, 0.1, 0.8, 0.0],  # class 0
        [0.0, 0.3, 0.7, 0.0],  # class 1
        [0.0, 0.6, 0.4, 0.0],  # class 1
        [0.0, 0.0, 0.1, 0.9],  # class 2
    ], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 2])
    mapping = FrequencyMapping().fit(scores, labels, 3)
    assert mapping.source_labels == [2, 1, 3]
    assert len(set(mapping.source_labels)) == 3
    probs = mapping.probabilities(scores)
    np.testing.assert_allclose(probs.sum(dim=1).numpy(), 1.0)
    assert probs.argmax(dim=1).tolist() == [0, 0, 0, 1, 2]


def test_one_to_one_holds_for_many_random_classes(rng):
    scores = torch.tensor(rng.dirichlet(np.ones(30), size=400))
    labels = torch.tensor(rng.integers(0, 20, 400))
    mapping = FrequencyMapping().fit(scores, labels, 20)
    assert len(set(mapping.source_labels)) == 20


def test_cross_entropy_values():
    probs = torch.tensor([[0.5, 0.5], [0.9, 0.1]])
    loss = cross_entropy(probs, torch.tensor([0, 1]))
    np.testing.assert_allclose(loss.numpy(), [np.log(2), -np.log(0.1)], rtol=1e-6)
