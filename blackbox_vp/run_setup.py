"""What a run is built from before its first query: the prompt, the splits, the budget plan and the
surrogate prior, each from the run's :class:`RunConfig`; errors name the option at fault."""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from backends import make_backend
from backends.errors import ConfigurationError
from blackbox_vp.config import RunConfig
from blackbox_vp.data import Dataset, Splits, load_task, split
from blackbox_vp.losses import LOSSES, Loss
from blackbox_vp.mappings import OutputMapping
from blackbox_vp.optimizers import OPTIMIZERS
from blackbox_vp.optimizers.guided import LADDER, RANDOM_DIRECTIONS
from blackbox_vp.parameterizations import PARAMETERIZATIONS
from blackbox_vp.prompts import PROMPTS, Prompt


def prompt_sizes(config: RunConfig, canvas_size: tuple[int, int]) -> tuple[int, int]:
    """Border width and patch side: as configured, else 32 and 48 pixels at 224 scaled to the canvas."""
    scale = min(canvas_size) / 224
    width = config.width if config.width is not None else round(32 * scale)
    patch = config.patch if config.patch is not None else round(48 * scale)
    return width, patch


def parameterization_of(config: RunConfig) -> str:
    """As set, else 'full' for the shadow method (its gradients are free) and 'grid' for a black-box search."""
    return config.parameterization or ("full" if OPTIMIZERS.factory_of(config.optimizer).trains_on_surrogate else "grid")


def build_prompt(config: RunConfig, canvas_size: tuple[int, int]) -> Prompt:
    """The configured prompt on ``canvas_size``: each option its class takes (``bbvp list prompts``) from the run
    setting of that name, the border width and patch side resolved by :func:`prompt_sizes`; the parameterization's
    options from the run settings it names (``Parameterization.run_settings``)."""
    settings = config.to_dict()
    kind = PARAMETERIZATIONS.get(parameterization_of(config))
    parameterization = kind(canvas_size, **{option: settings[name] for option, name in kind.run_settings.items()})
    width, patch = prompt_sizes(config, canvas_size)
    return PROMPTS.get(config.prompt)(canvas_size, parameterization=parameterization, **PROMPTS.arguments(
        config.prompt, {**settings, "width": width, "patch": patch}))


def loss_of(config: RunConfig) -> Loss:
    """The configured loss with its ``--loss-options``."""
    loss = LOSSES.get(config.loss)
    options = LOSSES.parse_options(config.loss, config.loss_options, "--loss-options")
    return functools.partial(loss, **options) if options else loss


DEFAULT_BATCH = 32  # training images per candidate in a step, where the budget has room for it
MIN_STEPS = 2  # an automatic batch size shrinks until the optimization images hold this many steps
VALIDATION_FLOOR = 20  # smallest automatic validation split (at least 2 images per class)


def validation_floor(num_classes: int) -> int:
    return max(VALIDATION_FLOOR, 2 * num_classes)


def split_sizes(config: RunConfig, budget: int, total: int, num_classes: int) -> tuple[int, int, int]:
    """Train, val and test sizes for a data set of ``total`` images: as set, else automatic (see BudgetPlan)."""
    test = config.test if config.test is not None else round(0.33 * total)
    val = (config.val if config.val is not None
           else min(200, round(0.11 * total), max(validation_floor(num_classes), budget // 10)))
    train = config.train if config.train is not None else min(1000, total - test - val)
    return train, val, test


def split_why(config: RunConfig, num_classes: int) -> dict[str, str]:
    """Where each split size of :func:`split_sizes` comes from, for a plan's ``why``."""
    return {"train": "set (--train)" if config.train is not None else "automatic: up to 1000 after val and test",
            "val": "set (--val)" if config.val is not None else
            f"automatic: a tenth of the budget, at most 200 and 11% of the data, at least {validation_floor(num_classes)}",
            "test": "set (--test)" if config.test is not None else "automatic: 33% of the data"}


class Plan:
    """What both plans share: sizes for any budget (``_sizes``), what a run takes at least (``needed``),
    and a refusal of a budget below it that names the smallest budget these settings work with."""

    explicit: ClassVar[tuple[str, ...]] = ()  # the settings a refusal names: left out, they follow the budget
    # The sizes both plans give (images; ``step_images``: what one step or round sends).
    budget: int
    train: int
    val: int
    test: int
    mapping: int
    validations: int
    batch_size: int
    step_images: int
    validation_every: float
    why: dict[str, str]

    @classmethod
    def make(cls, config: RunConfig, total: int, num_classes: int, *options: Any, **named: Any) -> Plan:
        """The plan for ``config`` on a data set of ``total`` images; refuses a budget it cannot split.
        ``options``, ``named``: what else the plan's sizes follow (BudgetPlan: the candidates a step scores)."""
        plan = cls._sizes(config, config.budget, total, num_classes, *options, **named)
        if plan.needed > config.budget:
            smallest = cls.smallest_budget(config, total, num_classes, *options, **named)
            fix = (f"raise --budget to at least {smallest}" if smallest is not None
                   else "no budget up to 1,000,000 images fits these settings")
            explicit = [f"--{name.replace('_', '-')} {getattr(config, name)}" for name in cls.explicit
                        if getattr(config, name) is not None]
            raise ConfigurationError(f"--budget {config.budget} is too small{plan.shortfall()}; {fix}"
                             + (f", or drop or lower {', '.join(explicit)} (left out, they follow the budget)"
                                if explicit else ""))
        return plan

    @classmethod
    def smallest_budget(cls, config: RunConfig, total: int, num_classes: int, *options: Any,
                        largest: int = 1_000_000, **named: Any) -> int | None:
        """The smallest budget these settings give a run with (None if none up to ``largest``).

        Scanned one image at a time: what a budget needs is not monotone in it (one more validation pass
        shrinks an automatic batch), so no jump is safe. Thousands of steps of arithmetic, only on refusal.
        """
        for budget in range(1, largest + 1):
            if cls._sizes(config, budget, total, num_classes, *options, **named).needed <= budget:
                return budget
        return None

    @classmethod
    def _sizes(cls, config: RunConfig, budget: int, total: int, num_classes: int, *options: Any,
               **named: Any) -> Plan:
        raise NotImplementedError

    def to_dict(self) -> dict:
        """The sizes and their reasons, for the journal and result.json."""
        raise NotImplementedError

    @property
    def needed(self) -> int:
        raise NotImplementedError

    def shortfall(self) -> str:
        """What the plan's stages need, for a refusal: ': the mapping needs ...'."""
        raise NotImplementedError


@dataclass
class BudgetPlan(Plan):
    """How the images are split: the data splits, and the budget between mapping, validation, search and head.

    Every size left automatic (None in the :class:`RunConfig`) follows the budget, so any budget down to
    :meth:`smallest_budget` gives a run: the validation split is a tenth of the budget (at most 200 or
    11% of the data, at least ``VALIDATION_FLOOR``), the mapping images a quarter (at least one
    validation pass, at most the training set), the validations as many as fit in a fifth (1 to 10),
    and the batch ``DEFAULT_BATCH`` images unless that leaves fewer than ``MIN_STEPS`` steps.
    Validations fall every ``validation_every`` optimization images; the loop always keeps room for
    one more, so the last prompt is validated too. ``why`` says, per size, where it came from.
    """

    budget: int
    train: int
    val: int  # images per validation pass: the whole validation split
    test: int
    mapping: int
    validations: int
    batch_size: int
    step_images: int
    head_stage: int  # a head refitted on the best searched prompt at the end: its mapping images and one validation
    why: dict[str, str]

    explicit = ("val", "mapping_images", "batch_size", "train")

    @classmethod
    def _sizes(cls, config: RunConfig, budget: int, total: int, num_classes: int, candidates_per_step: int,
               head_stage: bool) -> BudgetPlan:
        train, val, test = split_sizes(config, budget, total, num_classes)
        why = split_why(config, num_classes)
        mapping = min(config.mapping_images or max(val, budget // 4), max(train, 0))
        why["mapping"] = ("set (--mapping-images)" if config.mapping_images is not None else
                          "automatic: a quarter of the budget, at least one validation pass, at most the training set")
        head = mapping + val if head_stage else 0
        why["head_stage"] = ("the head refitted on the best searched prompt: the mapping images and one validation "
                             "pass" if head_stage else "none: the mapping is not refitted at the end")
        validations = (config.validations if config.validations is not None
                       else min(10, max(1, budget // (5 * max(val, 1)) - 1)))
        why["validations"] = ("set (--validations)" if config.validations is not None else
                              "automatic: as many passes as fit in a fifth of the budget, 1 to 10")
        optimization = budget - mapping - (validations + 1) * val - head
        batch = config.batch_size
        why["batch_size"] = "set (--batch-size)"
        if batch is None:
            batch = min(DEFAULT_BATCH, max(train, 1))
            why["batch_size"] = f"automatic: {DEFAULT_BATCH}, at most the training set"
            if optimization < MIN_STEPS * candidates_per_step * batch:
                batch = max(1, min(batch, optimization // (MIN_STEPS * candidates_per_step)))
                why["batch_size"] = (f"automatic: {DEFAULT_BATCH} would leave fewer than {MIN_STEPS} steps in the "
                                     f"{max(optimization, 0)} optimization images, so {batch}")
        return cls(budget, train, val, test, mapping, validations, batch, batch * candidates_per_step, head, why)

    @property
    def needed(self) -> int:
        """The least a run takes: the mapping, two validation passes, one step and the head stage."""
        return self.mapping + 2 * self.val + self.step_images + self.head_stage

    @property
    def optimization(self) -> int:
        return self.budget - self.mapping - (self.validations + 1) * self.val - self.head_stage

    @property
    def validation_every(self) -> float:  # type: ignore[override]  # read-only here, a class constant in ShadowPlan
        return max(self.optimization / self.validations, self.step_images)

    def shortfall(self) -> str:
        head = f", the head refit {self.head_stage}" if self.head_stage else ""
        return (f": the mapping needs {self.mapping} images, two validation passes {2 * self.val}, one optimization "
                f"step {self.step_images}{head}")

    def to_dict(self) -> dict:
        """For result.json: each size, the optimization images, and why each size is what it is."""
        sizes = {name: getattr(self, name) for name in ("budget", "train", "val", "test", "mapping", "validations",
                                                          "batch_size", "step_images", "head_stage")}
        return {**sizes, "optimization": self.optimization, "validation_every": round(self.validation_every, 1),
                "why": dict(self.why)}


MAX_ROUNDS = 16  # automatic rounds of the shadow method
TOTAL_EPOCHS = 9  # automatic epochs of the shadow method, spread over its rounds: minutes each on a CPU
CORRECTION_CANDIDATES = 1 + len(LADDER) + RANDOM_DIRECTIONS  # prompts a guided correction step scores


@dataclass
class ShadowPlan(Plan):
    """How the shadow method splits the budget: the mapping images (also the first answers the surrogate is
    fitted to), one baseline validation, rounds of (mapping images + one validation) under each trained
    prompt, then the black-box correction: guided steps on the target from the best round's prompt, and one
    more round's images to verify where they led. Automatic: as many mapping images as leave room for one
    round (at most the training set), as many rounds as the budget holds (at most ``MAX_ROUNDS``),
    ``TOTAL_EPOCHS`` of local training spread over them (a larger budget buys more refits of the surrogate
    on the prompts visited, for the same local compute), and the correction gets what the rounds leave if
    that holds a step and its verification. What is still left is unspent."""

    budget: int
    train: int
    val: int
    test: int
    mapping: int
    rounds: int
    epochs: int
    batch_size: int
    correction_steps: int  # guided steps of the correction phase (0: none)
    why: dict[str, str]

    explicit = ("val", "mapping_images", "rounds", "correction_images", "train")

    @classmethod
    def _sizes(cls, config: RunConfig, budget: int, total: int, num_classes: int) -> ShadowPlan:
        train, val, test = split_sizes(config, budget, total, num_classes)
        why = split_why(config, num_classes)
        mapping = min(config.mapping_images or max(val, budget // 2 - val), max(train, 1))
        why["mapping"] = ("set (--mapping-images)" if config.mapping_images is not None else
                          "automatic: the training set, or less to leave room for one round, at least one validation")
        batch = config.batch_size or min(DEFAULT_BATCH, max(train, 1))
        why["batch_size"] = "set (--batch-size)" if config.batch_size else f"automatic: {DEFAULT_BATCH}, at most the training set"
        round_images, step_images = mapping + val, CORRECTION_CANDIDATES * batch
        correction = config.correction_images or 0  # images set aside for the correction's steps
        if 0 < correction < step_images:
            raise ConfigurationError(f"--correction-images {correction} holds no correction step: a step scores "
                             f"{CORRECTION_CANDIDATES} prompts on a batch of {batch}, {step_images} images; give at least "
                             f"that, or 0 for no correction")
        set_aside = correction + round_images if correction else 0  # the correction's steps and their verification
        rounds = config.rounds or max(1, min(MAX_ROUNDS, (budget - mapping - val - set_aside) // max(round_images, 1)))
        why["rounds"] = ("set (--rounds)" if config.rounds is not None else
                         f"automatic: as many as the budget holds after the mapping, baseline and correction, at most "
                         f"{MAX_ROUNDS}")
        if config.correction_images is None:
            correction = budget - mapping - val - (rounds + 1) * round_images
        correction_steps = max(0, correction) // step_images
        why["correction_steps"] = (
            "set (--correction-images)" if config.correction_images is not None else
            f"automatic: the steps of {step_images} images ({CORRECTION_CANDIDATES} prompts x the batch) that fit in "
            f"what the rounds leave, less one round's images to verify the corrected prompt")
        epochs = config.epochs or max(1, TOTAL_EPOCHS // rounds)
        why["epochs"] = ("set (--epochs)" if config.epochs is not None else
                         f"automatic: {TOTAL_EPOCHS} in all spread over the rounds, at least 1 a round")
        return cls(budget, train, val, test, mapping, rounds, epochs, batch, correction_steps, why)

    @property
    def round_images(self) -> int:
        """What one round sends: the mapping images and one validation, under the round's prompt."""
        return self.mapping + self.val

    @property
    def correction_step_images(self) -> int:
        """What one guided correction step sends: its prompts on one minibatch."""
        return CORRECTION_CANDIDATES * self.batch_size

    @property
    def correction(self) -> int:
        """What the correction phase sends: its steps, then the corrected prompt's verification."""
        return self.correction_steps * self.correction_step_images + self.round_images if self.correction_steps else 0

    @property
    def needed(self) -> int:
        return self.mapping + self.val + self.rounds * self.round_images + self.correction

    def shortfall(self) -> str:
        correction = f", and the correction {self.correction}" if self.correction else ""
        return (f" for the shadow method: the mapping needs {self.mapping} images, the baseline validation {self.val}, "
                f"{self.rounds} round(s) {self.round_images} each{correction}")

    @property
    def validations(self) -> int:  # type: ignore[override]  # a field in BudgetPlan, follows the rounds here
        return self.rounds + (self.correction_steps > 0)

    step_images = round_images  # the journal's start line names what a step (here a round) sends
    validation_every = 0.0  # every round is validated
    head_stage = 0  # the head is judged on the rounds' own scores: nothing more to send

    def to_dict(self) -> dict:
        sizes = {name: getattr(self, name) for name in ("budget", "train", "val", "test", "mapping", "rounds",
                                                          "epochs", "batch_size", "round_images", "correction_steps",
                                                          "correction_step_images", "correction", "needed")}
        return {**sizes, "unspent": self.budget - self.needed, "why": dict(self.why)}


def load_splits(config: RunConfig, prompt: Prompt, plan_for: Callable[[Dataset], Plan]) -> tuple[Splits, Plan]:
    """The task's train/val/test splits at the prompt's inner size, as ``plan_for`` sizes them; errors name --data."""
    try:
        dataset = load_task(config.data, prompt.inner_size, seed=config.seed)
    except (OSError, ValueError) as error:
        raise ConfigurationError(f"--data {config.data}: {error}") from error
    plan = plan_for(dataset)
    try:
        splits = split(dataset, plan.train, plan.val, plan.test, seed=config.seed)
    except ValueError as error:
        raise ConfigurationError(f"--data {config.data}: {error}") from error
    if len(splits.train) == 0 or len(splits.val) == 0:
        raise ConfigurationError(f"--data {config.data}: the split left {len(splits.train)} training and {len(splits.val)} "
                         "validation images; both must be at least 1 (lower --val or --test)")
    return splits, plan


def task_splits(config: RunConfig, prompt: Prompt) -> Splits:
    """The task's splits at :func:`split_sizes`, drawn as a run with ``config`` draws them: for scripts that
    need a run's images without its plan (experiments/refit_head.py, the probes)."""
    dataset = load_task(config.data, prompt.inner_size, seed=config.seed)
    return split(dataset, *split_sizes(config, config.budget, len(dataset), len(dataset.classes)), seed=config.seed)


def resolve(config: RunConfig, canvas_size: tuple[int, int], splits: Splits, plan: Plan) -> RunConfig:
    """``config`` with every automatic size (None) replaced by the one the run uses, for config.toml."""
    width, patch = prompt_sizes(config, canvas_size)
    shadow: dict[str, Any] = {"rounds": plan.rounds, "epochs": plan.epochs,
              "correction_images": plan.correction_steps * plan.correction_step_images} if isinstance(plan, ShadowPlan) else {}
    return dataclasses.replace(config, width=width, patch=patch, parameterization=parameterization_of(config), **shadow,
                               mapping_images=plan.mapping,
                               validations=plan.validations, batch_size=plan.batch_size, train=len(splits.train),
                               val=len(splits.val), test=len(splits.test))


def surrogate_prior(config: RunConfig, prompt: Prompt, mapping: OutputMapping, splits: Splits, labels: list[str]):
    """The local surrogate's gradient as a prior (costs no query); it must share the backend's labels.

    ``--surrogate auto`` takes the built-in ImageNet surrogate when the backend answers with the
    ImageNet labels, and none (random directions only) otherwise.
    """
    from backends.torch_classifier import TorchClassifierBackend, imagenet_labels
    from blackbox_vp.surrogate import SurrogatePrior

    name = config.surrogate
    if name == "none":
        return None
    if name == "auto" and list(labels) != imagenet_labels():
        if len(labels) == len(imagenet_labels()):
            warnings.warn(f"--surrogate auto: --backend {config.backend} scores {len(labels)} labels but not by "
                          "ImageNet's names, so the search goes without the surrogate's prior (random directions "
                          "only); if it is an ImageNet classifier, pass --labels with its label names", stacklevel=2)
        return None
    surrogate = make_backend("surrogate" if name == "auto" else name, device=config.device)
    if not isinstance(surrogate, TorchClassifierBackend):
        raise ConfigurationError(f"--surrogate {config.surrogate} is not a local torch model; use 'surrogate' or 'none'")
    if list(surrogate.labels) != list(labels):
        raise ConfigurationError(f"--surrogate {config.surrogate} has other output labels than --backend {config.backend}, so "
                         "the output mapping does not apply to it; use --surrogate none")
    surrogate.model.requires_grad_(False)
    assert config.batch_size is not None, "surrogate_prior takes the resolved config (resolve sets the batch size)"
    return SurrogatePrior(surrogate, prompt, mapping, loss_of(config), splits.train, config.batch_size,
                          rng=np.random.default_rng(config.seed + 1))


def shadow_model(config: RunConfig, target_labels: list[str]):
    """The shadow method's surrogate (``--surrogate``; 'auto': EfficientNet-Lite1) with a fresh label adapter
    to the target's labels; any local torch classifier will do, whatever its labels."""
    from backends.torch_classifier import TorchClassifierBackend
    from blackbox_vp.shadow import LabelAdapter, ShadowModel

    if config.surrogate == "none":
        raise ConfigurationError("--surrogate none: the shadow method trains the prompt on a local surrogate; give one "
                         "(`bbvp list backends`, or hf:DIR) or leave --surrogate auto for EfficientNet-Lite1")
    name = "surrogate" if config.surrogate == "auto" else config.surrogate
    surrogate = make_backend(name, device=config.device)
    if not isinstance(surrogate, TorchClassifierBackend):
        raise ConfigurationError(f"--surrogate {config.surrogate} is not a local torch model, so it gives no gradients; use "
                         "'auto' (EfficientNet-Lite1), another local backend, or hf:DIR")
    return ShadowModel(surrogate, LabelAdapter(list(surrogate.labels), list(target_labels)))
