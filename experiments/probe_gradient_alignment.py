"""How well does the shadow's gradient point where the target's does? Cosines along the white-box path.

    python experiments/probe_gradient_alignment.py --data digits --train 1000 --val 100 --test 697 --seed 0

A prompt is trained white-box on the *target* (the reference model, whose weights are local) through the
frequency mapping, as the ceiling is; at a few of its steps the gradient of a loss with respect to the prompt
parameters is taken on a minibatch of training images through each of these models, and compared by cosine:

- ``target, other batch``: the target's gradient on an independent minibatch (how far a minibatch's own
  gradient is from another's: the most any surrogate could hope for at this batch size);
- ``shadow``: the surrogate (EfficientNet-Lite1) with its label adapter fitted (KL) to the target's answers
  under the grey prompt, as the shadow method primes it;
- ``surrogate``: the same surrogate with the adapter at its start (the identity between ImageNet labels);
- ``shadow, fine-tuned`` (with ``--finetune-epochs E``): at each point of the path, a copy of the shadow whose
  adapter is refitted and whose surrogate's *weights* are then fine-tuned (KL, Adam, batch-norm statistics
  frozen; design notes 3b) to the target's answers to the training images under the path's prompt and under
  ``--finetune-prompts`` - 1 random prompts around it (the Simulator Attack's refitting on visited inputs,
  with LeBA's hope that matching nearby outputs matches the slope). The most the shadow could learn there:
  a run would pay for every one of those answers.
- with ``--ensemble-with NAMES`` (other local models, e.g. ``surrogate-lite2``): each of them, its adapter at its
  start like ``surrogate``'s, and ``ensemble``, the mean of ``surrogate``'s gradient and theirs: the gradient of
  their mean loss, the ensemble that makes targeted adversarial examples transfer (Liu et al. 2017, sec. 5).

Losses: ``frequency``, cross-entropy through the frequency mapping fitted on the target's grey answers (the
shadow's transfer objective); ``head``, cross-entropy through a linear head fitted at that point of the path on
each model's own answers to the training images (the target's head for the target, the model's for the others).

A guided search (P-RGF, Cheng et al. 2019) gains over random directions only where the prior's cosine with the
true gradient exceeds about sqrt(q / D), q directions per step in D dimensions: the script prints that level.
Local compute only (nothing is budgeted here); one JSON line per step of the path, then a table.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from backends import make_backend
from backends.torch_classifier import TorchClassifierBackend
from blackbox_vp.config import RunConfig
from blackbox_vp.losses import LOSSES
from blackbox_vp.mappings import FrequencyMapping, LinearHeadMapping
from blackbox_vp.optimizers.whitebox import Whitebox
from blackbox_vp.run_setup import build_prompt, shadow_model, task_splits
from blackbox_vp.scoring import mapped_accuracy, score_all
from blackbox_vp.shadow import LabelAdapter, ShadowModel

HEAD_L2 = 1.0  # the training head's penalty, as `--transfer-head-l2 1.0`


def gradient(logits_of, prompt, theta: np.ndarray, mapping, pixels: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """d/d theta of the mean cross-entropy of ``mapping`` of the model's probabilities on one minibatch."""
    leaf = torch.tensor(theta, dtype=torch.float32, requires_grad=True)
    probabilities = logits_of(prompt.apply_differentiable(leaf, pixels)).float().softmax(dim=1).double()
    LOSSES.get("ce")(mapping.probabilities(probabilities), labels).mean().backward()
    assert leaf.grad is not None
    return leaf.grad.numpy().astype(np.float64).ravel()


def finetuned(shadow: ShadowModel, images: np.ndarray, answers: torch.Tensor, epochs: int, lr: float,
              batch: int, rng: np.random.Generator) -> tuple[ShadowModel, dict[str, float]]:
    """A copy of ``shadow``, its adapter refitted and then its surrogate's weights fine-tuned by KL divergence to the
    target's ``answers`` (N, Kt) to uint8 ``images`` (N, H, W, 3); batch-norm layers stay in eval mode, so their
    statistics are the pretrained ones. With the KL divergence on that data before and after the fine-tuning (the
    adapter refitted in both)."""
    copied = ShadowModel(copy.deepcopy(shadow.surrogate), copy.deepcopy(shadow.adapter))
    before = copied.adapter.fit(copied.features(images), answers)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    weights = list(copied.surrogate.model.parameters())
    for parameter in weights:
        parameter.requires_grad_(True)
    optimizer = torch.optim.Adam(weights, lr=lr)
    for _ in range(epochs):
        for chosen in np.array_split(rng.permutation(len(pixels)), max(1, len(pixels) // batch)):
            optimizer.zero_grad()
            log_q = F.log_softmax(copied.logits(pixels[chosen]), dim=1)
            F.kl_div(log_q, answers[chosen].float(), reduction="batchmean").backward()
            optimizer.step()
    for parameter in weights:
        parameter.requires_grad_(False)
    after = copied.disagreement(copied.features(images), answers)
    return copied, {"kl_before_finetune": round(before, 4), "kl_after_finetune": round(after, 4)}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


def pooled(flat: np.ndarray, shape: tuple[int, ...], cell: int) -> np.ndarray:
    """The gradient summed over ``cell`` x ``cell`` blocks of pixels: the gradient with respect to a prompt made
    of blocks of that side (its low-frequency part)."""
    channels, height, width = shape[-3:]
    blocks = flat.reshape(channels, height // cell, cell, width // cell, cell)
    return blocks.sum(axis=(2, 4)).ravel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="digits")
    parser.add_argument("--backend", default="reference")
    parser.add_argument("--surrogate", default="auto")
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--val", type=int, default=100)
    parser.add_argument("--test", type=int, default=697)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=0.1, help="the white-box path's Adam step size")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--at", default="0,30,120", help="the steps of the path where the gradients are compared")
    parser.add_argument("--pairs", type=int, default=3, help="minibatch pairs per point of the path")
    parser.add_argument("--directions", type=int, default=8, help="q, for the P-RGF level sqrt(q / D)")
    parser.add_argument("--cells", default="1,8,32", help="block sides (pixels) at which the gradients are compared")
    parser.add_argument("--finetune-epochs", type=int, default=0,
                        help="epochs of the 'shadow, fine-tuned' model's weight fine-tuning at each point (0: not shown)")
    parser.add_argument("--finetune-prompts", type=int, default=2,
                        help="prompts whose answers it is fine-tuned on: the path's and this many - 1 around it")
    parser.add_argument("--finetune-sigma", type=float, default=0.5,
                        help="the spread of the random prompts around the path's, in the prompt's parameters")
    parser.add_argument("--finetune-lr", type=float, default=1e-4)
    parser.add_argument("--ensemble-with", default="", metavar="NAMES",
                        help="comma-separated local models (`bbvp list backends`) shown beside the surrogate, each "
                        "alone and in the ensemble of their mean loss (none: not shown)")
    args = parser.parse_args()
    config = RunConfig(data=args.data, backend=args.backend, surrogate=args.surrogate, optimizer="shadow",
                       train=args.train, val=args.val, test=args.test, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    target = make_backend(args.backend)
    if not isinstance(target, TorchClassifierBackend):
        parser.error(f"--backend {args.backend}: the target's gradient is needed, so it must be a local torch model")
    prompt = build_prompt(config, target.image_size)
    splits = task_splits(config, prompt)
    train, classes = splits.train, len(splits.train.classes)
    labels_all = torch.from_numpy(train.labels)
    grey_train = score_all(target, prompt, prompt.initial(), train.images)
    frequency = FrequencyMapping().fit(grey_train, labels_all, classes)
    shadow = shadow_model(config, list(target.labels))
    shadow.adapter.fit(shadow.features(prompt.apply(prompt.initial()[None], train.images)), grey_train.float())
    surrogate = ShadowModel(shadow.surrogate, LabelAdapter(list(shadow.surrogate.labels), list(target.labels)))
    members = {name: ShadowModel(model, LabelAdapter(list(model.labels), list(target.labels)))
               for name, model in ((name, make_backend(name)) for name in args.ensemble_with.split(",") if name)}
    dimension, shape = prompt.initial().size, (3, *target.image_size)
    level = math.sqrt(args.directions / dimension)
    print(json.dumps({"dimension": dimension, "prgf_level": round(level, 4), "directions": args.directions}), flush=True)

    stops = sorted(int(step) for step in args.at.split(","))
    path = Whitebox(prompt.initial(), lr=args.lr)
    rows = []
    for step in range(stops[-1] + 1):
        if step in stops:
            start = time.monotonic()
            theta = path.recommend()
            composed_train = prompt.apply(theta[None], train.images)
            target_train = score_all(target, prompt, theta, train.images)
            heads = {}
            for name, answers in (("target", target_train), ("shadow", shadow.answers(composed_train)),
                                  ("surrogate", surrogate.answers(composed_train)),
                                  *((name, member.answers(composed_train)) for name, member in members.items())):
                heads[name] = LinearHeadMapping(l2=HEAD_L2, scale_quantile=0.5).fit(answers.double(), labels_all, classes)
            val_frequency = mapped_accuracy(FrequencyMapping().fit(target_train, labels_all, classes),
                                            score_all(target, prompt, theta, splits.val.images), splits.val.labels)
            cosines: dict[str, list[float]] = {}
            models = {"shadow": shadow, "surrogate": surrogate, **members}
            fit: dict[str, float] = {}
            if args.finetune_epochs:
                around = [theta + args.finetune_sigma * rng.standard_normal(theta.shape)
                          for _ in range(args.finetune_prompts - 1)]
                composed = np.concatenate([composed_train] + [prompt.apply(point[None], train.images) for point in around])
                answers = torch.cat([target_train] + [score_all(target, prompt, point, train.images) for point in around])
                models["shadow, fine-tuned"], fit = finetuned(shadow, composed, answers, args.finetune_epochs,
                                                              args.finetune_lr, args.batch, rng)
                heads["shadow, fine-tuned"] = LinearHeadMapping(l2=HEAD_L2, scale_quantile=0.5).fit(
                    models["shadow, fine-tuned"].answers(composed_train).double(), labels_all, classes)
            for _ in range(args.pairs):
                first, second = (rng.choice(len(train), size=args.batch, replace=False) for _ in range(2))
                batches = [(torch.tensor(train.images[chosen]).permute(0, 3, 1, 2).float(), labels_all[chosen])
                           for chosen in (first, second)]
                for loss in ("frequency", "head"):
                    mapping = {name: frequency if loss == "frequency" else head for name, head in heads.items()}
                    reference = gradient(target.logits, prompt, theta, mapping["target"], *batches[0])
                    others = {"target, other batch": gradient(target.logits, prompt, theta, mapping["target"], *batches[1]),
                              **{name: gradient(model.logits, prompt, theta, mapping[name], *batches[0])
                                 for name, model in models.items()}}
                    if members:
                        others["ensemble"] = np.mean([others[name] for name in ("surrogate", *members)], axis=0)
                    for cell in (int(side) for side in args.cells.split(",")):
                        for name, other in others.items():
                            cosines.setdefault(f"{loss}, {cell} px: {name}", []).append(
                                cosine(pooled(reference, shape, cell), pooled(other, shape, cell)))
            rows.append({"step": step, "target_frequency_val": val_frequency, **fit,
                         **{key: round(float(np.mean(values)), 4) for key, values in cosines.items()},
                         "seconds": round(time.monotonic() - start)})
            print(json.dumps(rows[-1]), flush=True)
        if step < stops[-1]:
            chosen = rng.choice(len(train), size=args.batch, replace=False)
            path.step(target, prompt, frequency, LOSSES.get("ce"), train.images[chosen], train.labels[chosen])

    keys = [key for key in rows[0] if ":" in key]
    print(f"\n{args.data}, seed {args.seed}: cosine with the target's minibatch gradient (mean of {args.pairs} "
          f"minibatches of {args.batch}), along the target's white-box frequency path at lr {args.lr}; "
          f"D = {dimension}, P-RGF level sqrt({args.directions}/D) = {level:.4f}")
    print("| step | target frequency val | " + " | ".join(keys) + " |")
    print("|---:|---:|" + "---:|" * len(keys))
    for row in rows:
        print(f"| {row['step']} | {row['target_frequency_val']:.3f} | " + " | ".join(f"{row[key]:.3f}" for key in keys) + " |")


if __name__ == "__main__":
    main()
