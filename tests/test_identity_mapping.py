import json

import numpy as np
import pytest
import torch

from blackbox_vp.mappings import MAPPINGS, IdentityMapping, mapping_from_state


def test_identity_mapping_renormalizes_and_round_trips():
    scores = torch.tensor([[0.2, 0.6, 0.1], [0.5, 0.25, 0.25]], dtype=torch.float64)
    mapping = MAPPINGS.get("identity")().fit(scores, torch.tensor([1, 0]), 3)
    assert isinstance(mapping, IdentityMapping) and not mapping.refit
    np.testing.assert_allclose(mapping.probabilities(scores).numpy(), [[2 / 9, 6 / 9, 1 / 9], [0.5, 0.25, 0.25]])
    restored = mapping_from_state(json.loads(json.dumps(mapping.state())))
    assert restored.state() == {"type": "identity", "num_classes": 3}
    torch.testing.assert_close(restored.probabilities(scores), mapping.probabilities(scores))


def test_identity_mapping_needs_as_many_labels_as_classes():
    scores = torch.full((4, 5), 0.2, dtype=torch.float64)
    with pytest.raises(ValueError, match="5 labels for 3 classes"):
        IdentityMapping().fit(scores, torch.zeros(4, dtype=torch.long), 3)
    with pytest.raises(RuntimeError, match="not fitted"):
        IdentityMapping().probabilities(scores)
    with pytest.raises(ValueError, match="fitted for 3 classes"):
        IdentityMapping(3).probabilities(scores)
