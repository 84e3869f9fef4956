"""experiments/probe_gradient_alignment.py: cosines of surrogate and target gradients along a white-box path."""

from __future__ import annotations

import json
import sys

from tests.test_probe_transfer_objective import load


def test_a_surrogate_that_is_the_target_points_where_the_target_does_alone_fine_tuned_or_in_an_ensemble(
        monkeypatch, capsys):
    # target and surrogate are the same tiny seeded net: the shadow's gradient is the target's on the same batch
    monkeypatch.setattr(sys, "argv", ["probe", "--backend", "toy-torch", "--surrogate", "toy-torch", "--train", "48",
                                      "--val", "16", "--test", "16", "--batch", "8", "--at", "0,2", "--pairs", "2",
                                      "--cells", "1,4", "--finetune-epochs", "1", "--finetune-prompts", "2",
                                      "--ensemble-with", "toy-torch"])
    load("probe_gradient_alignment").main()
    out = capsys.readouterr().out
    rows = [json.loads(line) for line in out.splitlines() if line.startswith('{"step"')]
    assert [row["step"] for row in rows] == [0, 2]
    for row in rows:
        assert row["frequency, 1 px: shadow"] > 0.95 and row["frequency, 1 px: surrogate"] > 0.95
        assert row["frequency, 1 px: shadow, fine-tuned"] > 0.9
        assert row["frequency, 1 px: toy-torch"] > 0.95 and row["head, 1 px: ensemble"] > 0.95  # a third copy
        assert row["frequency, 1 px: target, other batch"] < 0.9  # another minibatch's gradient is another direction
        assert all(-1.0 <= value <= 1.0 for key, value in row.items() if ":" in key)
        assert 0.0 <= row["kl_after_finetune"] and 0.0 <= row["kl_before_finetune"] < 0.05
    assert "| step | target frequency val |" in out and "P-RGF level" in out
