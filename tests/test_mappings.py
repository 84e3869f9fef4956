
import numpy as np
import torch

from blackbox_vp.losses import cross_entropy, focal, margin
from blackbox_vp.mappings import FrequencyMapping, LinearHeadMapping, MultiLabelMapping
from blackbox_vp.scoring import cross_validated_correct


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


def test_multilabel_mapping_owns_disjoint_label_sets_and_averages():
    rng = np.random.default_rng(1)
    scores = torch.tensor(rng.dirichlet(np.ones(40), size=300))
    labels = torch.tensor(rng.integers(0, 4, 300))
    mapping = MultiLabelMapping(labels_per_class=3).fit(scores, labels, 4)
    owned = [k for group in mapping.source_labels for k in group]
    assert [len(g) for g in mapping.source_labels] == [3, 3, 3, 3] and len(set(owned)) == 12
    probs = mapping.probabilities(scores)
    expected = torch.stack([scores[:, g].mean(dim=1) for g in mapping.source_labels], dim=1)
    np.testing.assert_allclose(probs.numpy(), (expected / expected.sum(1, keepdim=True)).numpy())


def test_linear_head_separates_what_frequency_cannot():
    # Class information lives in the *ratio* of two labels that are never the top-1: invisible to counts.
    rng = np.random.default_rng(2)
    labels = torch.tensor(rng.integers(0, 2, 400))
    logits = rng.normal(0, 0.1, (400, 6))
    logits[:, 0] += 3.0  # label 0 always wins
    logits[:, 1] += np.where(labels.numpy() == 0, 0.8, -0.8)
    scores = torch.tensor(np.exp(logits) / np.exp(logits).sum(1, keepdims=True))
    frequency = FrequencyMapping().fit(scores[:300], labels[:300], 2)
    head = LinearHeadMapping().fit(scores[:300], labels[:300], 2)
    accuracy = lambda m: (m.probabilities(scores[300:]).argmax(1) == labels[300:]).double().mean().item()  # noqa: E731
    assert accuracy(head) > 0.95 and accuracy(frequency) < 0.7


def test_a_linear_head_fitted_on_one_image_is_finite_and_gives_its_class(recwarn):
    """--mapping-images 1: one image's spread is zero, not NaN (and no degrees-of-freedom warning)."""
    scores = torch.softmax(torch.tensor([[2.0, 0.5, -1.0, 0.0]], dtype=torch.float64), dim=1)
    head = LinearHeadMapping().fit(scores, torch.tensor([2]), num_classes=3)
    assert torch.isfinite(head.weight).all() and head.probabilities(scores).argmax(dim=1).tolist() == [2]
    assert not [warning for warning in recwarn if "degrees of freedom" in str(warning.message)]


def test_cross_validation_scores_each_image_with_a_mapping_that_never_saw_it():
    # Labels carry no information: a head on 200 features fits its own images well but cross-validates
    # at chance; the fitted head passed in is not changed.
    rng = np.random.default_rng(3)
    scores = torch.tensor(rng.dirichlet(np.ones(200), size=300))
    labels = rng.integers(0, 4, 300)
    head = LinearHeadMapping().fit(scores, torch.tensor(labels), 4)
    weight = head.weight.clone()
    fitted_on_all = int((head.probabilities(scores).argmax(1).numpy() == labels).sum())
    cross_validated = cross_validated_correct(head, scores, labels, np.arange(300) % 5, 4)
    assert fitted_on_all > 0.9 * 300 and cross_validated < 0.4 * 300
    assert torch.equal(head.weight, weight)


def test_cross_validation_follows_the_given_folds():
    # Classes 0, 1, 2 win labels 0, 1, 3. Class 2 lives only in fold 0: held out, no fit has seen it, and
    # the frequency mapping fitted without it gives class 2 the first label left over (2), so all 10 of
    # its images are wrong; with class 2 in both folds every image is right.
    labels = np.array([0] * 10 + [1] * 10 + [2] * 10)
    scores = torch.full((30, 4), 0.1, dtype=torch.float64)
    scores[np.arange(30), np.array([0, 1, 3])[labels]] = 0.7
    folds = np.array([i % 2 for i in range(20)] + [0] * 10)
    assert cross_validated_correct(FrequencyMapping(), scores, labels, folds, 3) == 20
    assert cross_validated_correct(FrequencyMapping(), scores, labels, np.arange(30) % 2, 3) == 30


def test_focal_and_margin_losses():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    labels = torch.tensor([0, 0])
    np.testing.assert_allclose(focal(probs, labels).numpy(), [-(0.1**2) * np.log(0.9), -(0.8**2) * np.log(0.2)],
                               rtol=1e-6)
    np.testing.assert_allclose(margin(probs, labels).numpy(), [np.log(0.1 / 0.9), np.log(0.8 / 0.2)], rtol=1e-6)
    assert margin(torch.tensor([[0.9999, 1e-5]]), torch.tensor([0])).item() == -5.0  # floored at -kappa


def test_a_head_with_a_scale_quantile_floors_its_feature_scales_there_and_keeps_it_in_its_state():
    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.normal(size=(60, 8)) * np.array([1e-4, 1e-3, 0.1, 0.5, 1, 2, 3, 4]))
    scores, labels = logits.softmax(dim=1), torch.from_numpy(rng.integers(0, 3, size=60))
    raw = LinearHeadMapping().fit(scores, labels, 3).scale
    floored = LinearHeadMapping(scale_quantile=0.5).fit(scores, labels, 3)
    median = torch.quantile(raw, 0.5)
    assert torch.allclose(floored.scale, raw.clamp_min(median)) and (raw < median).sum() == 4
    again = LinearHeadMapping.from_state(floored.state())
    assert again.scale_quantile == 0.5 and torch.equal(again.probabilities(scores), floored.probabilities(scores))
    older = {key: value for key, value in floored.state().items() if key != "scale_quantile"}  # a prompt file before it
    assert LinearHeadMapping.from_state(older).scale_quantile == 0.0
