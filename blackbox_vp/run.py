"""One optimization run: split, fit the output mapping, optimize the prompt under the budget, test.

The loop is built on the optimizers' public ask/tell. Every image sent while learning goes through
one :class:`CountingBackend` whose hard budget refuses before a call would exceed it; the final
test evaluation goes through a separate counter and is reported apart (``test_queries``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from backends import Backend, CountingBackend, make_backend
from blackbox_vp.config import RunConfig
from blackbox_vp.data import Splits, load_task, split
from blackbox_vp.losses import LOSSES
from blackbox_vp.mappings import MAPPINGS, OutputMapping
from blackbox_vp.optimizers import make_optimizer
from blackbox_vp.parameterizations import PARAMETERIZATIONS
from blackbox_vp.prompts import PROMPTS, Prompt
from blackbox_vp.scoring import evaluate, score


@dataclass
class RunResult:
    """What a run reports; written to ``result.json``."""

    backend: str
    data: str
    optimizer: str
    budget: int
    queries_used: int
    test_accuracy: float
    val_accuracy: float
    baseline_test_accuracy: float
    baseline_val_accuracy: float
    test_queries: int
    steps: int
    seconds: float
    seed: int
    config: dict
    history: list[dict] = field(default_factory=list)
    theta: np.ndarray | None = field(default=None, repr=False)

    def summary(self) -> dict:
        """The JSON-serializable part (everything but the prompt parameters)."""
        return {k: v for k, v in self.__dict__.items() if k != "theta"}


def build_prompt(config: RunConfig, canvas_size: tuple[int, int]) -> Prompt:
    parameterization_options = {"grid": config.grid} if config.parameterization == "grid" else {}
    parameterization = PARAMETERIZATIONS.get(config.parameterization)(canvas_size, **parameterization_options)
    width = config.width if config.width is not None else round(30 * min(canvas_size) / 224)
    return PROMPTS.get(config.prompt)(canvas_size, width=width, parameterization=parameterization)


def default_split_sizes(total: int, config: RunConfig) -> tuple[int, int, int]:
    test = config.test if config.test is not None else round(0.33 * total)
    val = config.val if config.val is not None else min(200, round(0.11 * total))
    train = config.train if config.train is not None else min(1000, total - test - val)
    return train, val, test


class BudgetPlan:
    """Splits the budget into mapping, validation and optimization images; checks it is enough.

    Validations fall every ``validation_every`` optimization images; the loop always keeps room for
    one more, so the last prompt is validated too.
    """

    def __init__(self, config: RunConfig, splits: Splits, step_images: int):
        if config.budget < 1:
            raise ValueError(f"--budget must be a positive number of images, got {config.budget}")
        self.step_images = step_images
        self.mapping = min(config.mapping_images or max(len(splits.val), config.budget // 10), len(splits.train))
        self.validation_pass = len(splits.val)
        self.validations = (config.validations if config.validations is not None
                            else min(10, max(1, config.budget // (5 * self.validation_pass) - 1)))
        needed = self.mapping + 2 * self.validation_pass + step_images  # initial + final validation, one step
        if config.budget < needed:
            raise ValueError(
                f"--budget {config.budget} is too small: the mapping needs {self.mapping} images, two validation "
                f"passes {2 * self.validation_pass}, and one optimization step {step_images}; raise --budget to at "
                f"least {needed}, or lower --mapping-images, --val or --batch-size")
        optimization = config.budget - self.mapping - (self.validations + 1) * self.validation_pass
        self.validation_every = max(optimization / self.validations, step_images)


def optimize(config: RunConfig, backend: Backend | None = None) -> RunResult:
    """Run one optimization as configured; ``backend`` overrides ``config.backend`` (for tests)."""
    started = time.perf_counter()
    model = backend or make_backend(config.backend, device=config.device)
    prompt = build_prompt(config, tuple(model.image_size))
    dataset = load_task(config.data, prompt.inner_size, seed=config.seed)
    splits = split(dataset, *default_split_sizes(len(dataset), config), seed=config.seed)
    if len(splits.train) == 0 or len(splits.val) == 0:
        raise ValueError(f"{config.data}: the split left {len(splits.train)} training and {len(splits.val)} "
                         "validation images; both must be at least 1")
    loss_fn = LOSSES.get(config.loss)
    optimizer = make_optimizer(config.optimizer, prompt.initial(), seed=config.seed)
    step_images = optimizer.candidates_per_step * config.batch_size
    plan = BudgetPlan(config, splits, step_images)
    rng = np.random.default_rng(config.seed)
    learning = CountingBackend(model, budget=config.budget)
    progress = tqdm(total=config.budget, unit="img", desc=config.optimizer, disable=config.quiet, dynamic_ncols=True)

    def sent_so_far() -> None:
        progress.update(learning.images_sent - progress.n)

    # 1. The output mapping, fitted on training images under the initial prompt.
    theta0 = prompt.initial()
    mapping_idx = rng.choice(len(splits.train), size=plan.mapping, replace=False)
    mapping_scores = score(learning, prompt, theta0, splits.train.images[mapping_idx])
    mapping: OutputMapping = MAPPINGS.get(config.mapping)()
    mapping.fit(mapping_scores, torch.from_numpy(splits.train.labels[mapping_idx]), len(dataset.classes))
    sent_so_far()

    # 2. The initial prompt's validation accuracy: the prompt to beat.
    best_theta, best_val = theta0, evaluate(learning, prompt, theta0, mapping, splits.val)
    history = [{"images": learning.images_sent, "step": 0, "val_accuracy": best_val, "loss": None}]
    progress.set_postfix(best_val=f"{best_val:.3f}")
    sent_so_far()

    # 3. Optimization: every candidate of a step on one minibatch, in one backend call.
    next_validation = learning.images_sent + plan.validation_every
    labels_t = torch.from_numpy(splits.train.labels)
    while learning.fits(plan.step_images + plan.validation_pass):  # always room for a last validation
        batch = rng.choice(len(splits.train), size=min(config.batch_size, len(splits.train)), replace=False)
        candidates = optimizer.ask()
        scores = torch.from_numpy(learning.query(prompt.apply(candidates, splits.train.images[batch])))
        per_image = loss_fn(mapping.probabilities(scores), labels_t[batch].repeat(len(candidates)))
        losses = per_image.view(len(candidates), -1).mean(dim=1).numpy()
        optimizer.tell(candidates, losses)
        sent_so_far()
        if learning.images_sent >= next_validation or not learning.fits(plan.step_images + plan.validation_pass):
            theta = optimizer.recommend()
            val_accuracy = evaluate(learning, prompt, theta, mapping, splits.val)
            history.append({"images": learning.images_sent, "step": optimizer.steps,
                            "val_accuracy": val_accuracy, "loss": float(losses.mean())})
            if val_accuracy > best_val:
                best_theta, best_val = theta, val_accuracy
            while next_validation <= learning.images_sent:
                next_validation += plan.validation_every
            progress.set_postfix(best_val=f"{best_val:.3f}", loss=f"{losses.mean():.3f}")
            sent_so_far()
    progress.close()

    # 4. Test, once, through its own counter.
    testing = CountingBackend(model)
    baseline_test = evaluate(testing, prompt, theta0, mapping, splits.test)
    test_accuracy = evaluate(testing, prompt, best_theta, mapping, splits.test)
    result = RunResult(
        backend=config.backend, data=config.data, optimizer=config.optimizer, budget=config.budget,
        queries_used=learning.images_sent, test_accuracy=test_accuracy, val_accuracy=best_val,
        baseline_test_accuracy=baseline_test, baseline_val_accuracy=history[0]["val_accuracy"],
        test_queries=testing.images_sent, steps=optimizer.steps, seconds=time.perf_counter() - started,
        seed=config.seed, config=config.to_dict(), history=history, theta=best_theta)
    if config.out:
        from blackbox_vp.report import write_run

        write_run(Path(config.out), result, prompt, mapping, splits)
    return result
