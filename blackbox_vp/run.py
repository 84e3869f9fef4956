"""One optimization run: split, fit the output mapping, optimize the prompt under the budget, test.

The loop is built on the optimizers' public ask/tell. Every image sent while learning goes through
one :class:`CountingBackend` whose hard budget refuses before a call would exceed it; the final
test evaluation goes through a separate counter and is reported apart (``test_queries``).
"""

from __future__ import annotations

import copy
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
from blackbox_vp.scoring import ScoreBuffer, evaluate, score


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
    parameterization_options = {"grid": {"grid": config.grid}, "dct": {"k": config.dct_k},
                                "subspace": {"dim": config.subspace_dim, "seed": config.seed}}
    parameterization = PARAMETERIZATIONS.get(config.parameterization)(
        canvas_size, **parameterization_options.get(config.parameterization, {}))
    scale = min(canvas_size) / 224
    width = config.width if config.width is not None else round(30 * scale)
    patch = config.patch if config.patch is not None else round(48 * scale)
    prompt_options = {"padding": {"width": width, "placement": config.placement},
                      "full-frame": {"width": width, "placement": config.placement},
                      "fixed-patch": {"patch": patch},
                      "random-patch": {"patch": patch, "seed": config.seed}}
    return PROMPTS.get(config.prompt)(canvas_size, parameterization=parameterization,
                                      jpeg_quality=config.jpeg_quality, **prompt_options.get(config.prompt, {}))


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


class Selector:
    """Validates prompts on the validation split and keeps the best (prompt, mapping) pair.

    A mapping with ``refit`` (iterative, linear) is first refitted on the buffer of recent step
    scores, so it matches the prompt it is judged with. The test split is never looked at.
    """

    def __init__(self, counter: CountingBackend, prompt: Prompt, mapping: OutputMapping, splits: Splits,
                 progress: tqdm, buffer: ScoreBuffer):
        self.counter, self.prompt, self.mapping, self.val, self.progress = counter, prompt, mapping, splits.val, progress
        self.buffer = buffer
        self.num_classes = len(splits.train.classes)
        self.best_theta: np.ndarray | None = None
        self.best_mapping: OutputMapping = mapping
        self.best_val = -1.0
        self.history: list[dict] = []

    def consider(self, theta: np.ndarray, step: int, loss: float | None) -> float:
        """Validate ``theta`` (after refitting the mapping if it refits); keep the pair if it is the best."""
        if self.mapping.refit and len(self.buffer) >= self.buffer.capacity:
            self.mapping.fit(self.buffer.scores, self.buffer.labels, self.num_classes)
        val_accuracy = evaluate(self.counter, self.prompt, theta, self.mapping, self.val)
        self.history.append({"images": self.counter.images_sent, "step": step, "val_accuracy": val_accuracy,
                             "loss": loss})
        if val_accuracy > self.best_val:
            self.best_theta, self.best_val = np.array(theta, copy=True), val_accuracy
            self.best_mapping = copy.deepcopy(self.mapping)
        self.progress.set_postfix(best_val=f"{self.best_val:.3f}", **({} if loss is None else {"loss": f"{loss:.3f}"}))
        self.progress.update(self.counter.images_sent - self.progress.n)
        return val_accuracy


def run_blackbox(config: RunConfig, prompt: Prompt, mapping: OutputMapping, splits: Splits,
                 learning: CountingBackend, plan: BudgetPlan, selector: Selector, rng: np.random.Generator,
                 optimizer) -> int:
    """Ask/tell until the budget keeps room for only a last validation; returns the steps taken."""
    loss_fn = LOSSES.get(config.loss)
    next_validation = learning.images_sent + plan.validation_every
    labels = torch.from_numpy(splits.train.labels)
    while learning.fits(plan.step_images + plan.validation_pass):  # always room for a last validation
        batch = rng.choice(len(splits.train), size=min(config.batch_size, len(splits.train)), replace=False)
        candidates = optimizer.ask()
        scores = torch.from_numpy(learning.query(prompt.apply(candidates, splits.train.images[batch])))
        per_image = loss_fn(mapping.probabilities(scores), labels[batch].repeat(len(candidates)))
        losses = per_image.view(len(candidates), -1).mean(dim=1).numpy()
        optimizer.tell(candidates, losses)
        selector.buffer.add(scores, labels[batch].repeat(len(candidates)))
        selector.progress.update(learning.images_sent - selector.progress.n)
        if learning.images_sent >= next_validation or not learning.fits(plan.step_images + plan.validation_pass):
            selector.consider(optimizer.recommend(), optimizer.steps, float(losses.mean()))
            while next_validation <= learning.images_sent:
                next_validation += plan.validation_every
    return optimizer.steps


def surrogate_prior(config: RunConfig, prompt: Prompt, mapping: OutputMapping, splits: Splits, labels: list[str]):
    """The local surrogate's gradient as a prior (costs no query); it must share the backend's labels."""
    from backends.torch_classifier import TorchClassifierBackend
    from blackbox_vp.surrogate import SurrogatePrior

    surrogate = make_backend(config.surrogate, device=config.device)
    if not isinstance(surrogate, TorchClassifierBackend):
        raise ValueError(f"--surrogate {config.surrogate} is not a local torch model; use 'surrogate' or 'none'")
    if list(surrogate.labels) != list(labels):
        raise ValueError(f"--surrogate {config.surrogate} has other output labels than --backend {config.backend}, so "
                         "the output mapping does not apply to it; use --surrogate none")
    return SurrogatePrior(surrogate, prompt, mapping, LOSSES.get(config.loss), splits.train, config.batch_size,
                          seed=config.seed + 1)


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
    LOSSES.get(config.loss)  # unknown names fail here, before any query
    whitebox = config.optimizer == "whitebox"
    optimizer = None if whitebox else make_optimizer(config.optimizer, prompt.initial(), seed=config.seed)
    step_images = config.batch_size * (1 if whitebox else optimizer.candidates_per_step)
    plan = BudgetPlan(config, splits, step_images)
    rng = np.random.default_rng(config.seed)
    learning = CountingBackend(model, budget=config.budget)
    progress = tqdm(total=config.budget, unit="img", desc=config.optimizer, disable=config.quiet, dynamic_ncols=True)

    # 1. The output mapping, fitted on training images under the initial prompt.
    theta0 = prompt.initial()
    mapping_idx = rng.choice(len(splits.train), size=plan.mapping, replace=False)
    mapping_scores = score(learning, prompt, theta0, splits.train.images[mapping_idx])
    mapping: OutputMapping = MAPPINGS.get(config.mapping)()
    mapping.fit(mapping_scores, torch.from_numpy(splits.train.labels[mapping_idx]), len(dataset.classes))
    initial_mapping = copy.deepcopy(mapping)  # a refitting mapping changes in place during the run

    # 2. The initial prompt's validation accuracy: the prompt to beat.
    selector = Selector(learning, prompt, mapping, splits, progress, ScoreBuffer(plan.mapping))
    selector.consider(theta0, 0, None)

    # 3. Optimization.
    if whitebox:
        from blackbox_vp.whitebox import run_whitebox

        steps = run_whitebox(config, prompt, mapping, splits, learning, plan, selector, rng)
    else:
        if hasattr(optimizer, "prior") and config.surrogate != "none":
            optimizer.prior = surrogate_prior(config, prompt, mapping, splits, list(model.labels)).direction
        steps = run_blackbox(config, prompt, mapping, splits, learning, plan, selector, rng, optimizer)
    progress.close()

    # 4. Test, once, through its own counter.
    testing = CountingBackend(model)
    baseline_test = evaluate(testing, prompt, theta0, initial_mapping, splits.test)
    test_accuracy = evaluate(testing, prompt, selector.best_theta, selector.best_mapping, splits.test)
    result = RunResult(
        backend=config.backend, data=config.data, optimizer=config.optimizer, budget=config.budget,
        queries_used=learning.images_sent, test_accuracy=test_accuracy, val_accuracy=selector.best_val,
        baseline_test_accuracy=baseline_test, baseline_val_accuracy=selector.history[0]["val_accuracy"],
        test_queries=testing.images_sent, steps=steps, seconds=time.perf_counter() - started,
        seed=config.seed, config=config.to_dict(), history=selector.history, theta=selector.best_theta)
    if config.out:
        from blackbox_vp.report import write_run

        write_run(Path(config.out), result, prompt, selector.best_mapping, splits)
    return result
