"""Which loss should the shadow's transfer phase train the prompt on? One round, side by side, no budget plumbing.

    python experiments/probe_transfer_objective.py --data squares --train 700 --val 100 --test 1000 --seed 0

The target scores the training, validation and test images under the grey prompt; the surrogate's label
adapter is fitted (KL) to the target's training answers (the shadow's priming); then for each objective a
prompt is trained white-box on the shadow (surrogate + adapter) from grey, and the target scores it: a linear
head fitted on the target's training answers under that prompt gives the validation and test accuracy.

Objectives:
- ``frequency``: cross-entropy through the frequency mapping fitted on the target's grey answers (the shadow
  method's transfer phase today);
- ``head``: cross-entropy through a linear head fitted on the *shadow's* own answers under the current prompt,
  refitted at the start of each epoch (the head the target will get, as the shadow predicts it);
- ``both``: the sum of the two;
- ``target``: cross-entropy through the same frequency mapping, trained on the *target itself* (white-box, its
  weights are local): what this prompt and parameterization reach when the gradient is the target's, the
  one-round ceiling the transfer is measured against.

``--parameterization`` (with ``--grid``, ``--dct-k``) trains a coarser prompt than the default full
resolution: low-frequency perturbations transfer between models better than pixel-level ones in the attack
literature (Guo et al. 2018, "Low Frequency Adversarial Perturbation"; Sharma et al. 2019).

Prints one JSON line per objective and a table. Local compute only (nothing is budgeted here).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from backends import make_backend
from backends.torch_classifier import TorchClassifierBackend
from blackbox_vp.config import RunConfig
from blackbox_vp.losses import LOSSES
from blackbox_vp.mappings import FrequencyMapping, LinearHeadMapping
from blackbox_vp.optimizers.whitebox import Whitebox
from blackbox_vp.run_setup import build_prompt, shadow_model, task_splits
from blackbox_vp.scoring import mapped_accuracy, score_all


def head_figures(target, prompt, theta, splits, grey_frequency) -> dict:
    """Accuracies of ``theta`` on the target: a linear head and a frequency mapping fitted on its training answers
    under ``theta`` ("frequency": refitted), and the frequency mapping fitted on its grey answers, the one the
    prompts are trained through and a run's search judges them by ("grey mapping")."""
    train, val, test = (score_all(target, prompt, theta, part.images) for part in (splits.train, splits.val, splits.test))
    labels = torch.from_numpy(splits.train.labels)
    head = LinearHeadMapping().fit(train, labels, len(splits.train.classes))
    frequency = FrequencyMapping().fit(train, labels, len(splits.train.classes))
    return {"head_val": mapped_accuracy(head, val, splits.val.labels),
            "head_test": mapped_accuracy(head, test, splits.test.labels),
            "grey_mapping_val": mapped_accuracy(grey_frequency, val, splits.val.labels),
            "grey_mapping_test": mapped_accuracy(grey_frequency, test, splits.test.labels),
            "frequency_val": mapped_accuracy(frequency, val, splits.val.labels),
            "frequency_test": mapped_accuracy(frequency, test, splits.test.labels)}


def diverse(composed: torch.Tensor, shrink: float, rng: np.random.Generator) -> torch.Tensor:
    """Input diversity (Xie et al. 2019, DI-FGSM): the batch shrunk by a random factor in [1 - shrink, 1] and
    pasted at a random place on a mid-grey canvas of the same size."""
    size = composed.shape[-1]
    side = int(round(size * rng.uniform(1 - shrink, 1)))
    small = torch.nn.functional.interpolate(composed, size=(side, side), mode="bilinear", align_corners=False)
    top, left = (int(v) for v in rng.integers(0, size - side + 1, size=2))
    canvas = torch.full_like(composed, 0.5)
    canvas[:, :, top : top + side, left : left + side] = small
    return canvas


def train_prompt(objective: str, model, prompt, frequency, splits, epochs: int, lr: float, batch: int, seed: int,
                 scale_quantile: float, head_l2: float, diversity: float):
    rng = np.random.default_rng(seed)
    train = splits.train
    trainer = Whitebox(prompt.initial(), lr=lr)
    ce = LOSSES.get("ce")
    steps = -(-len(train) // batch)
    losses = []
    for _ in range(epochs):
        head = None
        if objective in ("head", "both"):
            shadow_answers = model.answers(prompt.apply(trainer.recommend()[None], train.images)).double()
            head = LinearHeadMapping(l2=head_l2, scale_quantile=scale_quantile)
            head.fit(shadow_answers, torch.from_numpy(train.labels), len(train.classes))
        for _ in range(steps):
            chosen = rng.choice(len(train), size=min(batch, len(train)), replace=False)
            pixels = torch.tensor(train.images[chosen]).permute(0, 3, 1, 2).float()
            labels = torch.from_numpy(train.labels[chosen])
            composed = prompt.apply_differentiable(trainer.theta, pixels)
            if diversity:
                composed = diverse(composed, diversity, rng)
            probabilities = model.logits(composed).softmax(dim=1).double()
            loss = torch.zeros((), dtype=torch.float64)
            if objective in ("frequency", "both"):
                loss = loss + ce(frequency.probabilities(probabilities), labels).mean()
            if head is not None:
                loss = loss + ce(head.probabilities(probabilities), labels).mean()
            trainer.adam.zero_grad()
            loss.backward()
            trainer.adam.step()
            losses.append(loss.item())
    return trainer.recommend(), float(np.mean(losses[-steps:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="squares")
    parser.add_argument("--backend", default="reference")
    parser.add_argument("--surrogate", default="auto")
    parser.add_argument("--train", type=int, default=700)
    parser.add_argument("--val", type=int, default=100)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--objectives", default="frequency,head,both")
    parser.add_argument("--scale-quantile", type=float, default=0.5,
                        help="the training head's feature scales are floored at this quantile of theirs")
    parser.add_argument("--head-l2", type=float, default=1e-2, help="the training head's L2 penalty")
    parser.add_argument("--diversity", type=float, default=0.0,
                        help="input diversity: shrink each training batch by a random factor down to 1 - this")
    parser.add_argument("--parameterization", default="full", help="the prompt's (`bbvp list parameterizations`)")
    parser.add_argument("--grid", type=int, default=8, help="grid side of the 'grid' parameterization")
    parser.add_argument("--dct-k", type=int, default=8, help="low frequencies per axis of the 'dct' parameterization")
    args = parser.parse_args()
    config = RunConfig(data=args.data, backend=args.backend, surrogate=args.surrogate, optimizer="shadow",
                       train=args.train, val=args.val, test=args.test, seed=args.seed,
                       parameterization=args.parameterization, grid=args.grid, dct_k=args.dct_k)
    target = make_backend(args.backend)
    if "target" in args.objectives.split(",") and not isinstance(target, TorchClassifierBackend):
        parser.error(f"--objectives target trains on the target's own gradient, so --backend {args.backend} must be "
                     "a local torch model (reference, toy-torch)")
    prompt = build_prompt(config, target.image_size)
    splits = task_splits(config, prompt)
    grey_train = score_all(target, prompt, prompt.initial(), splits.train.images)
    labels = torch.from_numpy(splits.train.labels)
    frequency = FrequencyMapping().fit(grey_train, labels, len(splits.train.classes))
    model = shadow_model(config, list(target.labels))
    features = model.features(prompt.apply(prompt.initial()[None], splits.train.images))
    kl = model.adapter.fit(features, grey_train.float())
    rows = [{"objective": "grey", **head_figures(target, prompt, prompt.initial(), splits, frequency)}]
    print(json.dumps({**rows[0], "adapter_kl": round(kl, 4)}), flush=True)
    for objective in args.objectives.split(","):
        start = time.monotonic()
        trained_on, loss_name = (target, "frequency") if objective == "target" else (model, objective)
        theta, loss = train_prompt(loss_name, trained_on, prompt, frequency, splits, args.epochs, args.lr, args.batch,
                                   args.seed, args.scale_quantile, args.head_l2, args.diversity)
        rows.append({"objective": objective, **head_figures(target, prompt, theta, splits, frequency),
                     "last_epoch_loss": loss,
                     "seconds": round(time.monotonic() - start)})
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{args.data}, seed {args.seed}, {args.epochs} epochs at lr {args.lr}, scale quantile {args.scale_quantile}, "
          f"head l2 {args.head_l2}, diversity {args.diversity}, parameterization {prompt.parameterization.config()}:")
    print("| objective | head val | head test | grey mapping val | grey mapping test | frequency (refitted) val | "
          "frequency (refitted) test |\n|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['objective']} | {row['head_val']:.3f} | {row['head_test']:.3f} | {row['grey_mapping_val']:.3f} | "
              f"{row['grey_mapping_test']:.3f} | {row['frequency_val']:.3f} | {row['frequency_test']:.3f} |")


if __name__ == "__main__":
    main()
