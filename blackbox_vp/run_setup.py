"""What a run is built from before its first query: the prompt, the splits, the budget plan and the
surrogate prior, each from the run's :class:`RunConfig`; errors name the option at fault."""

from __future__ import annotations

import dataclasses

from backends import make_backend
from blackbox_vp.config import RunConfig
from blackbox_vp.data import Splits, load_task, split
from blackbox_vp.losses import LOSSES
from blackbox_vp.mappings import OutputMapping
from blackbox_vp.parameterizations import PARAMETERIZATIONS
from blackbox_vp.prompts import PROMPTS, Prompt


def prompt_sizes(config: RunConfig, canvas_size: tuple[int, int]) -> tuple[int, int]:
    """Border width and patch side: as configured, else 32 and 48 pixels at 224 scaled to the canvas."""
    scale = min(canvas_size) / 224
    width = config.width if config.width is not None else round(32 * scale)
    patch = config.patch if config.patch is not None else round(48 * scale)
    return width, patch


def build_prompt(config: RunConfig, canvas_size: tuple[int, int]) -> Prompt:
    parameterization_options = {"grid": {"grid": config.grid}, "dct": {"k": config.dct_k},
                                "subspace": {"dim": config.subspace_dim, "seed": config.seed}}
    parameterization = PARAMETERIZATIONS.get(config.parameterization)(
        canvas_size, **parameterization_options.get(config.parameterization, {}))
    width, patch = prompt_sizes(config, canvas_size)
    height, wide = canvas_size
    if config.prompt in ("padding", "full-frame") and not 2 * width < min(canvas_size):
        raise ValueError(f"--width {width} is too wide for the model's {height}x{wide} input: a border leaves no image; "
                         f"use --width {(min(canvas_size) - 1) // 2} or less")
    if config.prompt in ("fixed-patch", "random-patch") and not patch <= min(canvas_size):
        raise ValueError(f"--patch {patch} is larger than the model's {height}x{wide} input; use --patch "
                         f"{min(canvas_size)} or less")
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


def load_splits(config: RunConfig, prompt: Prompt) -> Splits:
    """The task's train/val/test splits at the prompt's inner size; errors name --data."""
    try:
        dataset = load_task(config.data, prompt.inner_size, seed=config.seed)
    except (OSError, ValueError) as error:
        raise ValueError(f"--data {config.data}: {error}") from error
    splits = split(dataset, *default_split_sizes(len(dataset), config), seed=config.seed)
    if len(splits.train) == 0 or len(splits.val) == 0:
        raise ValueError(f"--data {config.data}: the split left {len(splits.train)} training and {len(splits.val)} "
                         "validation images; both must be at least 1 (lower --val or --test)")
    return splits


class BudgetPlan:
    """Splits the budget into mapping, validation and optimization images; checks it is enough.

    Validations fall every ``validation_every`` optimization images; the loop always keeps room for
    one more, so the last prompt is validated too.
    """

    def __init__(self, config: RunConfig, splits: Splits, step_images: int, head_stage: bool = False):
        self.step_images = step_images
        self.mapping = min(config.mapping_images or max(len(splits.val), config.budget // 4), len(splits.train))
        self.validation_pass = len(splits.val)
        # A head refitted on the best searched prompt at the end: its training images and one validation.
        self.head_stage = self.mapping + self.validation_pass if head_stage else 0
        self.validations = (config.validations if config.validations is not None
                            else min(10, max(1, config.budget // (5 * self.validation_pass) - 1)))
        needed = self.mapping + 2 * self.validation_pass + step_images + self.head_stage
        if config.budget < needed:
            head = f", the head refit {self.head_stage}" if self.head_stage else ""
            raise ValueError(
                f"--budget {config.budget} is too small: the mapping needs {self.mapping} images, two validation "
                f"passes {2 * self.validation_pass}, one optimization step {step_images}{head}; raise --budget to at "
                f"least {needed}, or lower --mapping-images, --val or --batch-size")
        optimization = config.budget - self.mapping - (self.validations + 1) * self.validation_pass - self.head_stage
        self.validation_every = max(optimization / self.validations, step_images)


def resolve(config: RunConfig, canvas_size: tuple[int, int], splits: Splits, plan: BudgetPlan) -> RunConfig:
    """``config`` with every automatic size (None) replaced by the one the run uses, for config.toml."""
    width, patch = prompt_sizes(config, canvas_size)
    return dataclasses.replace(config, width=width, patch=patch, mapping_images=plan.mapping,
                               validations=plan.validations, train=len(splits.train), val=len(splits.val),
                               test=len(splits.test))


def surrogate_prior(config: RunConfig, prompt: Prompt, mapping: OutputMapping, splits: Splits, labels: list[str]):
    """The local surrogate's gradient as a prior (costs no query); it must share the backend's labels.

    ``--surrogate auto`` takes the built-in ImageNet surrogate when the backend answers with the
    ImageNet labels, and none (random directions only) otherwise.
    """
    from backends.torch_classifier import TorchClassifierBackend, imagenet_labels
    from blackbox_vp.surrogate import SurrogatePrior

    name = config.surrogate
    if name == "none" or (name == "auto" and list(labels) != imagenet_labels()):
        return None
    surrogate = make_backend("surrogate" if name == "auto" else name, device=config.device)
    if not isinstance(surrogate, TorchClassifierBackend):
        raise ValueError(f"--surrogate {config.surrogate} is not a local torch model; use 'surrogate' or 'none'")
    if list(surrogate.labels) != list(labels):
        raise ValueError(f"--surrogate {config.surrogate} has other output labels than --backend {config.backend}, so "
                         "the output mapping does not apply to it; use --surrogate none")
    return SurrogatePrior(surrogate, prompt, mapping, LOSSES.get(config.loss), splits.train, config.batch_size,
                          seed=config.seed + 1)
