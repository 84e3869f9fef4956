"""A saved prompt's linear head refitted on another backend's answers: the white-box ceiling for a target that
gives no gradients (a top-5-only API), as the prompt trained on the full model, with a head on what that
target answers.

    python experiments/refit_head.py CELL/prompt.json --backend reference-top5 --data digits \
        --train 1000 --val 100 --test 697 --seed 0

The splits are the run's (same sizes and seed); the head is fitted on the target's scores of every
training image under the prompt (as a run's mapping images at that budget) and scored once on the test
split, beside grey + head fitted the same way. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from backends import make_backend
from blackbox_vp.config import RunConfig
from blackbox_vp.mappings import LinearHeadMapping
from blackbox_vp.prompt_file import load_prompt
from blackbox_vp.run_setup import task_splits
from blackbox_vp.scoring import mapped_accuracy, score


def head_accuracy(backend, prompt, theta: np.ndarray, train, test) -> float:
    """Test accuracy of a linear head fitted on the backend's scores of the training images under ``theta``."""
    scores = torch.cat([score(backend, prompt, theta, train.images[start : start + 256])
                        for start in range(0, len(train), 256)])
    head = LinearHeadMapping().fit(scores, torch.from_numpy(train.labels), len(train.classes))
    test_scores = torch.cat([score(backend, prompt, theta, test.images[start : start + 256])
                             for start in range(0, len(test), 256)])
    return mapped_accuracy(head, test_scores, test.labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prompt", help="prompt.json of a run (e.g. the white-box ceiling's cell)")
    parser.add_argument("--backend", required=True, help="the backend whose answers the head is fitted on")
    parser.add_argument("--data", default="digits")
    parser.add_argument("--train", type=int, required=True)
    parser.add_argument("--val", type=int, required=True)
    parser.add_argument("--test", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    prompt, theta, _, metadata = load_prompt(args.prompt)
    config = RunConfig(data=args.data, train=args.train, val=args.val, test=args.test, seed=args.seed)
    splits = task_splits(config, prompt)
    backend = make_backend(args.backend)
    print(json.dumps({"prompt": args.prompt, "backend": args.backend, "seed": args.seed,
                      "prompt_head_test_accuracy": head_accuracy(backend, prompt, theta, splits.train, splits.test),
                      "grey_head_test_accuracy": head_accuracy(backend, prompt, prompt.initial(), splits.train,
                                                               splits.test),
                      "prompt_trained_on": metadata.get("backend"), "test_images": len(splits.test)}))


if __name__ == "__main__":
    main()
