"""The state of a run in progress: what a checkpoint pickles whole, so that a resumed run goes on
exactly where it was (see :mod:`blackbox_vp.run`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from blackbox_vp.journal import Ledger
from blackbox_vp.mappings import LinearHeadMapping, OutputMapping
from blackbox_vp.optimizers import Optimizer
from blackbox_vp.optimizers.guided import Guided
from blackbox_vp.optimizers.whitebox import Whitebox
from blackbox_vp.scoring import ScoreBuffer
from blackbox_vp.shadow import LabelAdapter


@dataclass
class Selection:
    """The best (prompt, mapping) pair on the validation split so far, and every validation."""

    best_theta: np.ndarray | None = None
    best_mapping: OutputMapping | None = None
    best_val: float = -1.0
    baseline_val: float | None = None  # the initial prompt's, with the mapping it is finally judged with
    searched_theta: np.ndarray | None = None  # the best prompt the search produced (the initial one excluded)
    searched_val: float = -1.0
    history: list[dict] = field(default_factory=list)

    def chosen(self) -> tuple[np.ndarray, OutputMapping]:
        """The prompt and mapping the test judges, set before it: by the baseline validation (or its skipping)
        and the phases after it."""
        if self.best_theta is None or self.best_mapping is None:
            raise RuntimeError("the prompt and mapping to test are chosen before the test phase")
        return self.best_theta, self.best_mapping


class InitialHead(NamedTuple):
    """The initial prompt's head and what a head stage judges it by (not saved: read from the run state)."""

    head: OutputMapping  # fitted on the mapping images' scores under the initial prompt
    cv_correct: int  # of those images, how many it gets right in cross-validation
    val_scores: torch.Tensor  # the initial prompt's validation scores


@dataclass
class FinalScores:
    """The test split's scores, taken once at the end."""

    baseline_accuracy: float
    accuracy: float
    predicted: np.ndarray  # classes of the first EXAMPLE_IMAGES test images, for examples.png


@dataclass
class StepRecord:
    """A step taken whose validation (if due), journal line and checkpoint are still to come."""

    loss: float
    train_accuracy: float
    seconds: float
    validate: bool


@dataclass
class ShadowState:
    """The shadow method's progress: the adapter, every answer the surrogate is fitted to, and each round's verdict."""

    adapter: LabelAdapter
    round: int = 0  # rounds verified
    transfer_steps: int = 0  # white-box steps of the round in progress
    features: list[torch.Tensor] = field(default_factory=list)  # the surrogate's log-probabilities (float32), per answer
    answers: list[torch.Tensor] = field(default_factory=list)  # the target's probabilities (float32) of the same images
    rounds: list[dict] = field(default_factory=list)  # {"round", "theta", "corrected", "val_accuracy", and with a head:
    # "head" (fitted on the round's answers), "head_cv", "head_val"}
    correction: Guided | None = None  # the correction phase's search, from its first step on
    transfer_head: LinearHeadMapping | None = None  # --transfer-head-l2: the head the epoch in progress trains through

    def __getstate__(self) -> dict:
        """The checkpoint leaves the features out (4 MB a round of 1,000 images): the distil phase computes
        them again from the prompts and images, locally, after a resume."""
        return {**self.__dict__, "features": []}


@dataclass
class RunState:
    """Everything a run changes as it goes; the checkpoint pickles it whole."""

    config: dict  # the resolved settings it was made with; a resume checks config.toml against them
    phase: str  # what comes next: "mapping", "baseline" (validation), "optimization" (or the shadow method's
    # "distil", "transfer", "verify"), "head", "test" or "done"
    rng: np.random.Generator  # mapping images and minibatches
    optimizer: Optimizer | Whitebox  # with its own random state
    mapping: OutputMapping  # refitting mappings change in place
    buffer: ScoreBuffer
    ledger: Ledger  # images and seconds per phase, last journal "send" id
    budget_plan: dict  # how the budget was split and why (BudgetPlan.to_dict), for result.json
    prior_rng: np.random.Generator | None = None  # the surrogate prior's minibatches (guided, the shadow's correction)
    initial_mapping: OutputMapping | None = None
    head: OutputMapping | None = None  # a mapping searched with another one, refitted on the chosen prompt
    initial_head: OutputMapping | None = None
    mapping_images: np.ndarray | None = None  # training images scored for the mapping; the head stage reuses them
    initial_head_cv: int | None = None  # of those, how many the initial prompt's head gets right in cross-validation
    baseline_val_scores: torch.Tensor | None = None  # the initial prompt's validation scores, kept for the head
    selection: Selection = field(default_factory=Selection)
    next_validation: float = 0.0
    steps: int = 0
    pending: StepRecord | None = None  # set between a step and its journal line
    scoring: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # answered queries of the phase in progress
    initial_scores: torch.Tensor | None = None  # the mapping images' scores under the initial prompt (float32)
    head_sizes: tuple[int, int] | None = None  # mapping and validation images the head stage judges on
    adjustments: dict[str, str] = field(default_factory=dict)  # what the images counted twice after a crash shrank
    kept: dict[str, str] | None = None  # which prompt the run kept, and why
    seconds: float = 0.0  # wall time until the last checkpoint, over every session
    losses: list[tuple[int, float]] = field(default_factory=list)  # (images used, step loss), for curve.png
    images_lost: int = 0
    resumes: int = 0
    test: FinalScores | None = None
    shadow: ShadowState | None = None  # the shadow method's (None for the others)
