"""One optimization run: split, fit the output mapping, optimize the prompt under the budget, test.

The loop is built on the optimizers' public ask/tell. Every image sent while learning goes through
one :class:`CountingBackend` whose hard budget refuses before a call would exceed it; the final
test evaluation is counted apart (``test_queries``).

With a run directory (``out``) the run can be resumed after a crash, SIGKILL included:

- ``config.toml`` holds every setting, automatic sizes resolved;
- ``journal.jsonl`` gets a line *before* every query (:mod:`blackbox_vp.journal`), so the images
  sent after the last checkpoint are known;
- ``checkpoint`` holds the whole :class:`RunState` (:mod:`blackbox_vp.checkpoint`), written before
  the first query, after every phase and every step, and before a step's validation.

:func:`resume` loads the checkpoint, counts the images that the journal shows were sent after it
(they may have been paid for), and goes on. It replays the same minibatches and candidates as the
uninterrupted run, and validates at the same steps; the query that was in flight is sent again. So
a resumed run ends with the same prompt as the uninterrupted one, except that the images counted
twice may leave no room for the last step, which then is not taken (the budget is never exceeded).

Ctrl-C (or SIGTERM, as schedulers send) stops the run after the current step, with a checkpoint and a
partial ``result.json`` (:class:`RunInterrupted`); a second stops it at once (the last checkpoint stays
valid). One process at a time works in a run directory (:mod:`blackbox_vp.directory_lock`).
"""

from __future__ import annotations

import copy
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import numpy as np
import torch
from tqdm import tqdm

from backends import (
    Backend,
    BackendWrapper,
    CachingBackend,
    CountingBackend,
    LabelOnlyBackend,
    TopKBackend,
    make_backend,
)
from backends.base import pixel_size
from backends.errors import ConfigurationError
from backends.http import HTTP_OPTIONS, is_url
from backends.torch_classifier import TorchClassifierBackend
from blackbox_vp.checkpoint import load_checkpoint, save_checkpoint
from blackbox_vp.config import RunConfig
from blackbox_vp.data import Splits, task_classes
from blackbox_vp.journal import Journal, JournaledBackend, Ledger, read_journal
from blackbox_vp.losses import Loss
from blackbox_vp.mappings import MAPPINGS, OutputMapping
from blackbox_vp.optimizers import OPTIMIZERS, Optimizer, make_optimizer
from blackbox_vp.optimizers.whitebox import Whitebox, torch_model_of
from blackbox_vp.prompts import Prompt
from blackbox_vp.report import machine, versions, write_run
from blackbox_vp.run_directory import RunDirectory
from blackbox_vp.run_setup import (
    BudgetPlan,
    Plan,
    ShadowPlan,
    build_prompt,
    load_splits,
    loss_of,
    resolve,
    shadow_model,
    surrogate_prior,
)
from blackbox_vp.run_state import FinalScores, InitialHead, RunState, ShadowState, StepRecord
from blackbox_vp.scoring import (
    ScoreBuffer,
    correct_count,
    cross_validated_correct,
    mapped_accuracy,
    score,
)
from blackbox_vp.shadow import ShadowModel
from blackbox_vp.shadow_phases import ShadowPhases
from blackbox_vp.stop import StopRequest

EXAMPLE_IMAGES = 8  # test images shown in examples.png
HEAD_FOLDS = 5  # cross-validation folds that judge the head stage: the i-th mapping image drawn is in fold i mod 5
CHUNK = 256  # images per query when a phase scores many; each answered query goes into the checkpoint
# Settings a resumed run may change, since they do not change what it computes; the others are the run's.


@dataclass
class RunResult:
    """What a run reports; written to ``result.json``. Test fields are None in a partial result."""

    status: str  # "finished", or "interrupted" (Ctrl-C; resume it)
    backend: str
    data: str
    optimizer: str
    budget: int
    queries_used: int
    test_accuracy: float | None
    val_accuracy: float | None
    baseline_test_accuracy: float | None
    baseline_val_accuracy: float | None
    test_queries: int
    steps: int
    seconds: float
    seed: int
    images_lost: int  # sent after the last checkpoint before a crash; counted, and sent again on resume
    resumes: int
    phases: dict  # {phase: {"images": ..., "seconds": ...}} for mapping, optimization, validation, test
    seeds: dict
    versions: dict
    machine: dict
    config: dict
    history: list[dict] = field(default_factory=list)
    budget_plan: dict = field(default_factory=dict)  # how the budget was split, and why (BudgetPlan.to_dict)
    adjustments: dict = field(default_factory=dict)  # what the images counted twice after a crash shrank or skipped
    kept: dict | None = None  # {"prompt": "searched" or "initial", "why": ...}
    theta: np.ndarray | None = field(default=None, repr=False)
    backend_stats: dict | None = None  # an HTTP backend's requests, retries, images answered and cost
    cache: dict | None = None  # {"hits", "misses"}: images answered from memory, and sent, this session (--cache)

    def summary(self) -> dict:
        """The JSON-serializable part (everything but the prompt parameters)."""
        return {k: v for k, v in self.__dict__.items() if k != "theta"}


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the run after a step; ``result`` is the partial result, ``out`` the run directory."""

    def __init__(self, result: RunResult, out: Path | None):
        hint = (f"resume with `bbvp optimize --resume {out}` or blackbox_vp.resume({str(out)!r})" if out
                else "there is no run directory (--out), so it cannot be resumed")
        super().__init__(f"run stopped after step {result.steps}, {result.queries_used} images used; {hint}")
        self.result = result
        self.out = out

    def __reduce__(self) -> tuple:
        return RunInterrupted, (self.result, self.out)  # pickles across processes (experiment workers)


# The run --------------------------------------------------------------------------------------------
class Run:
    """A run in progress: what is rebuilt from the configuration, and the :class:`RunState` that is saved."""

    def __init__(self, config: RunConfig, model: Backend, prompt: Prompt, splits: Splits, plan: Plan,
                 loss_fn: Loss, state: RunState, out: Path | None, journal: Journal, stop: StopRequest,
                 shadow_model: ShadowModel | None = None):
        self.config, self.prompt, self.splits, self.plan, self.loss_fn = config, prompt, splits, plan, loss_fn
        self.state, self.out, self.journal, self.stop = state, out, journal, stop
        self.directory = RunDirectory(out) if out is not None else None
        self.journaled = JournaledBackend(model, journal, state.ledger)
        self.learning = CountingBackend(self.journaled, budget=config.budget)
        self.learning.images_sent = state.ledger.learning_images
        trains = OPTIMIZERS.factory_of(config.optimizer)
        self.torch_model = (torch_model_of(model) if trains.needs_gradients and not trains.trains_on_surrogate
                            else None)
        if shadow_model is not None:
            assert isinstance(plan, ShadowPlan)
            method = ShadowPhases(self, shadow_model, plan).table()
        else:
            method = {"optimization": self.search, "head": self.refit_head}
        self.phases = {"mapping": self.fit_mapping, "baseline": self.validate_baseline, **method, "test": self.test}
        self.reports_retries = self.journaled.unwrap().reports_traffic
        self.seconds_before, self.session_started = state.seconds, time.perf_counter()
        self.progress = tqdm(total=config.budget, initial=self.learning.images_sent, unit="img",
                             desc=config.optimizer, disable=config.quiet, dynamic_ncols=True)

    def execute(self) -> RunResult:
        """Every phase still to do, from the state's phase on; a checkpoint after each."""
        state = self.state
        try:
            if state.phase == "mapping":
                self.checkpoint()  # before the first query
            while state.phase != "done":
                self.phases[state.phase]()
                if self.stop.requested and state.phase not in ("test", "done"):
                    return self.interrupt()
        finally:
            self.progress.close()
        result = self.result("finished")
        if self.directory is not None:
            theta, mapping = state.selection.chosen()
            outcome = state.test
            assert outcome is not None, "the test phase, the last before done, sets the test scores"
            write_run(self.directory, result.summary(), self.prompt, theta, mapping, self.splits.test,
                      outcome.predicted, state.losses)
        self.journal.write("end", time=now(), queries_used=result.queries_used, test_accuracy=result.test_accuracy)
        return result

    def elapsed(self) -> float:
        return self.seconds_before + time.perf_counter() - self.session_started

    def checkpoint(self) -> None:
        self.state.seconds = self.elapsed()
        if self.directory is not None:
            save_checkpoint(self.directory.checkpoint, self.state)

    def show(self, loss: float | None = None) -> None:
        """Progress bar: images used of the budget, best validation accuracy, loss, retries (HTTP)."""
        postfix = {"best_val": f"{self.state.selection.best_val:.3f}"} if self.state.selection.history else {}
        if loss is not None:
            postfix["loss"] = f"{loss:.3f}"
        if self.reports_retries:
            postfix["retries"] = str(self.journaled.retries())
        self.progress.set_postfix(postfix, refresh=False)
        self.progress.update(self.learning.images_sent - self.progress.n)

    def scored(self, key: str, theta: np.ndarray, images: np.ndarray, backend: Backend | None = None) -> torch.Tensor:
        """Scores of ``images`` prompted with ``theta``, in queries of at most ``CHUNK`` images (``backend``: the
        budgeted one unless given).

        Each answered query is kept in the state under ``key`` and checkpointed, so a crash loses only the
        query in flight: the resumed run asks again under the same key and sends only what is missing. A
        phase clears its keys when it ends (:meth:`end_phase`). ``images`` may be fewer than when the key
        started (a stage shrunk after a crash): the answered queries cover a prefix of them.
        """
        backend = backend or self.learning
        answered = self.state.scoring.setdefault(key, [])
        for start in range(self.answered(key), len(images), CHUNK):
            answered.append(score(backend, self.prompt, theta, images[start : start + CHUNK]))
            self.checkpoint()
        if not answered:
            return torch.zeros((0, len(self.journaled.labels)), dtype=torch.float64)
        return torch.cat(answered)[: len(images)]

    def answered(self, key: str) -> int:
        """Images already scored under ``key`` (see :meth:`scored`)."""
        return sum(len(chunk) for chunk in self.state.scoring.get(key, []))

    def end_phase(self, phase: str) -> None:
        """The phase is done: forget its answered queries, move on, checkpoint."""
        self.state.scoring.clear()
        self.state.phase = phase
        self.show()
        self.checkpoint()

    def adjust(self, what: str, why: str) -> None:
        """Record (journal and result.json) a stage that the images counted twice after a crash shrank or skipped."""
        self.state.adjustments[what] = why
        self.journal.write("adjusted", what=what, why=why, images=self.learning.images_sent,
                           left=self.learning.remaining)

    def fit_mapping(self) -> None:
        """The output mapping, fitted on training images under the initial prompt."""
        state, train = self.state, self.splits.train
        with state.ledger.during("mapping"):
            if state.mapping_images is None:  # drawn once: a resumed run scores the same images
                state.mapping_images = state.rng.choice(len(train), size=self.plan.mapping, replace=False)
            chosen = state.mapping_images
            scores = self.scored("mapping", self.prompt.initial(), train.images[chosen])
            labels = torch.from_numpy(train.labels[chosen])
            state.mapping.fit(scores, labels, len(train.classes))
            if state.shadow is not None:  # the surrogate's first answers to follow (priming)
                state.shadow.answers.append(scores.to(torch.float32))
            if state.head is not None:  # the same paid-for scores fit the head too
                state.head.fit(scores, labels, len(train.classes))
                state.initial_head_cv = self.cross_validate_head(scores)
                state.initial_scores = scores.to(torch.float32)  # to judge a head stage shrunk after a crash
        state.initial_mapping = copy.deepcopy(state.mapping)  # a refitting mapping changes in place during the run
        state.initial_head = copy.deepcopy(state.head)
        self.end_phase("baseline")

    def validate_baseline(self) -> None:
        """The initial prompt's validation accuracy: the prompt to beat."""
        state = self.state
        if not self.learning.fits(self.plan.val - self.answered(f"validation:{state.steps}")):
            # Only after crashes whose images counted twice leave less than one validation: nothing more can be
            # judged, so the initial prompt goes to the test with the mapping (or head) it was fitted with.
            self.adjust("baseline validation", f"skipped, and the search with it: {self.learning.remaining} images "
                        f"left after the images counted twice after crashes, {self.plan.val} needed")
            state.selection.best_theta = self.prompt.initial()
            state.selection.best_mapping = self.initial_prompt_mapping()
            state.kept = {"prompt": "initial", "why": "no validation fitted in the budget after crashes"}
            self.end_phase("test")
            return
        state.selection.baseline_val, state.baseline_val_scores = self.validate(self.prompt.initial(), None)
        state.next_validation = self.learning.images_sent + self.plan.validation_every
        self.end_phase("distil" if state.shadow is not None else "optimization")

    def validate(self, theta: np.ndarray, loss: float | None) -> tuple[float, torch.Tensor]:
        """Validate ``theta`` (after refitting the mapping if it refits); keep the pair if it is the best.

        The test split is never looked at.
        """
        state, selection = self.state, self.state.selection
        with state.ledger.during("validation"):
            recent = state.buffer.scores  # None until a step adds its scores
            if state.mapping.refit and recent is not None and len(state.buffer) >= state.buffer.capacity:
                state.mapping.fit(recent, state.buffer.labels, len(self.splits.train.classes))
            scores = self.scored(f"validation:{state.steps}", theta, self.splits.val.images)
            accuracy = mapped_accuracy(state.mapping, scores, self.splits.val.labels)
        selection.history.append({"images": self.learning.images_sent, "step": state.steps,
                                  "val_accuracy": accuracy, "loss": loss})
        if accuracy > selection.best_val:
            selection.best_theta, selection.best_val = np.array(theta, copy=True), accuracy
            selection.best_mapping = copy.deepcopy(state.mapping)
        if accuracy > selection.searched_val and not np.array_equal(theta, self.prompt.initial()):
            selection.searched_theta, selection.searched_val = np.array(theta, copy=True), accuracy
        return accuracy, scores

    def step(self, batch: np.ndarray) -> tuple[float, float]:
        """One optimization step on a minibatch: (mean loss, training accuracy) over its candidates."""
        state, train = self.state, self.splits.train
        if state.optimizer.needs_gradients:  # the white-box reference: forwards and backwards, no queries
            assert self.torch_model is not None, "the white-box reference gets the target's torch model (__init__)"
            self.learning.charge(len(batch))  # forwards count like queries
            self.journaled.announce(len(batch))
            loss, scores = cast(Whitebox, state.optimizer).step(self.torch_model, self.prompt, state.mapping, self.loss_fn,
                                                train.images[batch], train.labels[batch])
            labels = torch.from_numpy(train.labels[batch])
            probabilities = state.mapping.probabilities(scores.double())
        else:
            scores, labels, probabilities, loss = self.query_step(cast(Optimizer, state.optimizer), batch)
        state.buffer.add(scores, labels)
        return loss, float((probabilities.argmax(dim=1) == labels).double().mean())

    def query_step(self, optimizer: Optimizer, batch: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        """One ask/tell of a black-box optimizer: the target scores its prompts on one minibatch (common random
        numbers) and their mean losses are told back; returns the scores, labels, mapped probabilities, mean loss."""
        train = self.splits.train
        candidates = optimizer.ask()
        labels = torch.from_numpy(train.labels[batch]).repeat(len(candidates))
        scores = torch.from_numpy(self.learning.query(self.prompt.apply(candidates, train.images[batch])))
        probabilities = self.state.mapping.probabilities(scores)
        losses = self.loss_fn(probabilities, labels).view(len(candidates), -1).mean(dim=1).numpy()
        optimizer.tell(candidates, losses)
        return scores, labels, probabilities, float(losses.mean())

    def search(self) -> None:
        """The black-box search (or the white-box reference), then the head stage."""
        self.optimize()
        if not self.stop.requested:
            self.end_phase("head")

    def optimize(self) -> None:
        """Steps until the budget keeps room for only a last validation, or Ctrl-C; a checkpoint after each.

        A step that is validated is checkpointed before its validation too, so a crash in the validation
        costs the validation's images, not the step's as well.
        """
        state, learning = self.state, self.learning
        plan = self.plan
        assert isinstance(plan, BudgetPlan)  # the searches' plan
        room = plan.step_images + plan.val + plan.head_stage  # a last validation, the head
        with state.ledger.during("optimization"):
            if state.pending is not None:  # the last run stopped in this step's validation
                self.close_step()
            while learning.fits(room) and not self.stop.requested:
                started = time.perf_counter()
                batch = state.rng.choice(len(self.splits.train), size=min(self.plan.batch_size,
                                                                          len(self.splits.train)), replace=False)
                loss, train_accuracy = self.step(batch)
                state.steps += 1
                state.losses.append((learning.images_sent, loss))
                last = not learning.fits(room)
                if last and learning.images_sent - state.images_lost + room <= self.config.budget:
                    self.adjust("steps", f"step {state.steps} is the last: the {state.images_lost} images counted "
                                f"twice after a crash left {learning.remaining}, and another step with its validation "
                                f"and the head stage takes {room}")
                validate = learning.images_sent >= state.next_validation or last
                state.pending = StepRecord(loss, train_accuracy, time.perf_counter() - started, validate)
                if validate:
                    self.checkpoint()
                self.close_step()
            if not self.stop.requested:
                self.end_search_cut_short(room)

    def end_search_cut_short(self, room: int) -> None:
        """After a resume whose images counted twice ended the search before the uninterrupted run would
        have: say so, and validate the last step's prompt if no validation came after it."""
        state, learning = self.state, self.learning
        if "steps" not in state.adjustments and learning.images_sent - state.images_lost + room <= self.config.budget:
            self.adjust("steps", f"the search ended after step {state.steps}: the {state.images_lost} images counted "
                        f"twice after a crash left {learning.remaining}, and a step with its validation and the "
                        f"head stage takes {room}")
        validated = {entry["step"] for entry in state.selection.history}
        if state.steps not in validated and learning.fits(self.plan.val - self.answered(f"validation:{state.steps}")):
            self.validate(state.optimizer.recommend(), None)
            state.scoring.clear()
            self.checkpoint()

    def close_step(self) -> None:
        """Validate the step's prompt if due, journal the step, checkpoint."""
        state, record, started = self.state, self.state.pending, time.perf_counter()
        assert record is not None, "a step leaves its record pending until close_step"
        val_accuracy = None
        if record.validate and not self.learning.fits(self.plan.val - self.answered(f"validation:{state.steps}")):
            # Only after a resume: the images counted twice left no room to validate this step's prompt.
            self.journal.write("validation_skipped", step=state.steps, images=self.learning.images_sent,
                               needed=self.plan.val, left=self.learning.remaining)
            self.adjust(f"validation at step {state.steps}", f"skipped: {self.learning.remaining} images left after "
                        f"the images counted twice after a crash, {self.plan.val} needed")
        elif record.validate:
            val_accuracy, _ = self.validate(state.optimizer.recommend(), record.loss)
            while state.next_validation <= self.learning.images_sent:
                state.next_validation += self.plan.validation_every
        self.journal.write("step", step=state.steps, images=self.learning.images_sent, loss=record.loss,
                           train_accuracy=record.train_accuracy, val_accuracy=val_accuracy,
                           step_size=state.optimizer.step_size,
                           seconds=round(record.seconds + time.perf_counter() - started, 4),
                           elapsed=round(self.elapsed(), 3))
        state.pending = None
        state.scoring.clear()
        self.show(record.loss)
        self.checkpoint()

    @property
    def mapping_images(self) -> np.ndarray:
        """The training images scored for the mapping, drawn in the mapping phase (the first)."""
        chosen = self.state.mapping_images
        if chosen is None:
            raise RuntimeError("the mapping images are drawn in the mapping phase, before any phase that reads them")
        return chosen

    @property
    def head(self) -> OutputMapping:
        """The head of a run that has one (a mapping searched with another, as the linear head)."""
        if self.state.head is None:
            raise RuntimeError("only a run with a head (a mapping searched with another) fits or judges one")
        return self.state.head

    def initial_head(self) -> InitialHead:
        """The initial prompt's head and its judgement, for a head stage: the mapping phase fits and
        cross-validates it, the baseline validation scores the validation split."""
        state = self.state
        if state.initial_head is None or state.initial_head_cv is None or state.baseline_val_scores is None:
            raise RuntimeError("a head stage comes after the mapping phase fitted the initial prompt's head and the "
                               "baseline validation scored it")
        return InitialHead(state.initial_head, state.initial_head_cv, state.baseline_val_scores)

    def initial_prompt_mapping(self) -> OutputMapping:
        """The mapping the initial prompt is finally judged with: its head, else the mapping as first fitted."""
        mapping = self.state.initial_head or self.state.initial_mapping
        if mapping is None:
            raise RuntimeError("the mapping phase fits the initial prompt's mapping before any phase that reads it")
        return mapping

    def cross_validate_head(self, scores: torch.Tensor) -> int:
        """Mapping images the head gets right in cross-validation on a prompt's ``scores`` of the first of them."""
        chosen, train = self.mapping_images[: len(scores)], self.splits.train
        folds = np.arange(len(chosen)) % HEAD_FOLDS
        return cross_validated_correct(self.head, scores, train.labels[chosen], folds, len(train.classes))

    def head_sizes(self) -> tuple[int, int]:
        """Mapping and validation images the head stage scores: all of both (the plan's), unless the images
        counted twice after a crash leave less. Then the mapping images come first (they also train the
        head) and the validation images take what is left; what is already answered stays counted."""
        state = self.state
        wanted_mapping, wanted_val = state.head_sizes or (self.plan.mapping, self.plan.val)
        done_mapping, done_val = self.answered("head:mapping"), self.answered("head:validation")
        remaining = self.learning.remaining
        assert remaining is not None, "the run's counter has the budget"
        available = done_mapping + done_val + remaining
        mapping = wanted_mapping if done_val else min(wanted_mapping, available)
        state.head_sizes = mapping, min(wanted_val, available - mapping)
        if state.head_sizes != (self.plan.mapping, self.plan.val):
            self.adjust("head stage", f"judged on {state.head_sizes[0]} of {self.plan.mapping} mapping images and "
                        f"{state.head_sizes[1]} of {self.plan.val} validation images: the images counted twice after "
                        f"a crash left {available} for it")
        return state.head_sizes

    def refit_head(self) -> None:
        """Fit the head on the best searched prompt's own scores; keep it only if it beats the initial prompt's head.

        The searched prompt is the best on validation under the search's mapping, the initial prompt
        excluded: a prompt that the frequency mapping ranks below grey may still give the head better
        features. The two heads are judged on every image scored for them: 5-fold cross-validation on
        the mapping images (the same images and folds for both prompts: a paired comparison) plus the
        validation split, 1,100 images by default rather than the 100 whose noise let a worse prompt
        win. The initial prompt's head was judged in the mapping phase, so it costs nothing here; the
        searched prompt costs a pass over the mapping images and one validation (reserved in the
        budget plan). After a crash the stage judges both on as many of those images as the budget left
        allows (:meth:`head_sizes`), and is skipped with fewer than ``HEAD_FOLDS`` mapping images.
        """
        state, selection, val = self.state, self.state.selection, self.splits.val
        if state.head is None:
            best = selection.best_theta
            moved = best is not None and not np.array_equal(best, self.prompt.initial())
            state.kept = {"prompt": "searched" if moved else "initial",
                          "why": f"best on validation under the {self.config.mapping} mapping "
                                 f"({selection.best_val:.4f}; the initial prompt {selection.baseline_val:.4f})"}
        else:
            initial = self.initial_head()
            selection.baseline_val = mapped_accuracy(initial.head, initial.val_scores, val.labels)
            theta, mapping, best_val = self.prompt.initial(), initial.head, selection.baseline_val
            state.kept = {"prompt": "initial", "why": "the search validated no prompt other than the initial one"}
            searched = selection.searched_theta
            if searched is not None:
                theta, mapping, best_val = self.judge_head(searched, theta, mapping, best_val)
            selection.best_theta, selection.best_mapping, selection.best_val = theta, mapping, best_val
        self.end_phase("test")

    def judge_head(self, searched: np.ndarray, theta: np.ndarray, mapping: OutputMapping,
                   best_val: float) -> tuple[np.ndarray, OutputMapping, float]:
        """The head stage's judgement of ``searched`` against the initial prompt's (``theta``, ``mapping``, ``best_val``);
        returns the winner."""
        state, train, val = self.state, self.splits.train, self.splits.val
        mapping_count, val_count = self.head_sizes()
        if mapping_count < HEAD_FOLDS:
            self.adjust("head stage", f"skipped: the images counted twice after a crash left {mapping_count} "
                        f"mapping images for it, fewer than {HEAD_FOLDS}; the initial prompt's head is kept")
            state.kept = {"prompt": "initial", "why": "the head stage had no room after a crash"}
            return theta, mapping, best_val
        chosen = self.mapping_images[:mapping_count]
        with state.ledger.during("mapping"):
            scores = self.scored("head:mapping", searched, train.images[chosen])
            head = copy.deepcopy(self.head).fit(scores, torch.from_numpy(train.labels[chosen]), len(train.classes))
            cv_correct = self.cross_validate_head(scores)
        with state.ledger.during("validation"):
            val_scores = self.scored("head:validation", searched, val.images[:val_count])
        initial = self.initial_head()
        if mapping_count == len(self.mapping_images):
            initial_cv = initial.cv_correct
        else:  # a stage shrunk after a crash: the initial prompt's head judged again on the same fewer images
            assert state.initial_scores is not None, "the mapping phase keeps the initial scores where there is a head"
            initial_cv = self.cross_validate_head(state.initial_scores[:mapping_count].double())
        val_labels = val.labels[:val_count]
        val_correct = correct_count(head, val_scores, val_labels)
        initial_val_correct = correct_count(initial.head, initial.val_scores[:val_count], val_labels)
        pooled = (cv_correct + val_correct) / (mapping_count + val_count)
        initial_pooled = (initial_cv + initial_val_correct) / (mapping_count + val_count)
        accuracy = val_correct / val_count if val_count else float("nan")
        state.selection.history.append({"images": self.learning.images_sent, "step": state.steps,
                                        "val_accuracy": accuracy, "loss": None, "head": True,
                                        "pooled_accuracy": pooled, "initial_pooled_accuracy": initial_pooled})
        judged = (f"judged on {mapping_count} mapping images (5-fold cross-validation) and {val_count} validation "
                  f"images: {pooled:.4f} for the searched prompt's head against {initial_pooled:.4f} for the "
                  "initial prompt's")
        if pooled > initial_pooled:
            state.kept = {"prompt": "searched", "why": judged}
            return searched, head, accuracy
        state.kept = {"prompt": "initial", "why": judged + (" (a tie keeps the initial prompt)" if pooled == initial_pooled
                                                          else "")}
        return theta, mapping, best_val

    def test(self) -> None:
        """The test split, once, with the initial and the best prompt; counted apart from the budget."""
        state, test, best = self.state, self.splits.test, self.state.selection
        with state.ledger.during("test"):
            initial = self.scored("test:initial", self.prompt.initial(), test.images, backend=self.journaled)
            baseline = mapped_accuracy(self.initial_prompt_mapping(), initial, test.labels)
            theta, mapping = best.chosen()
            scores = self.scored("test:best", theta, test.images, backend=self.journaled)
            predicted = mapping.probabilities(scores).argmax(dim=1).numpy()
        accuracy = float(np.mean(predicted == test.labels)) if len(test) else float("nan")
        state.test = FinalScores(baseline, accuracy, predicted[:EXAMPLE_IMAGES])
        self.end_phase("done")

    def interrupt(self) -> RunResult:
        """After Ctrl-C: the checkpoint is current; write a partial result.json and raise RunInterrupted."""
        result = self.result("interrupted")
        if self.directory is not None:
            self.directory.write_result(result.summary())
        self.journal.write("interrupted", time=now(), step=self.state.steps, images=result.queries_used)
        raise RunInterrupted(result, self.out)

    def result(self, status: str) -> RunResult:
        config, state, selection, outcome = self.config, self.state, self.state.selection, self.state.test
        seeds = {"splits": config.seed, "minibatches": config.seed, "optimizer": config.seed}
        if state.prior_rng is not None:
            seeds["surrogate_minibatches"] = config.seed + 1
        return RunResult(
            status=status, backend=config.backend, data=config.data, optimizer=config.optimizer, budget=config.budget,
            queries_used=self.learning.images_sent, test_accuracy=outcome.accuracy if outcome else None,
            val_accuracy=selection.best_val if selection.history else None,
            baseline_test_accuracy=outcome.baseline_accuracy if outcome else None,
            baseline_val_accuracy=selection.baseline_val,
            test_queries=state.ledger.images["test"], steps=state.steps, seconds=round(self.elapsed(), 3),
            seed=config.seed, images_lost=state.images_lost, resumes=state.resumes, phases=state.ledger.totals(),
            seeds=seeds, versions=versions(), machine=machine(config.device), config=config.to_dict(),
            history=selection.history, budget_plan=state.budget_plan, adjustments=dict(state.adjustments),
            kept=state.kept, theta=selection.best_theta,
            backend_stats=self.journaled.unwrap().stats(),
            cache=self.cache_counts())

    def cache_counts(self) -> dict | None:
        """The cache's hits and misses in this session (it starts empty after a resume), if the run has one."""
        backend = self.journaled.inner
        while isinstance(backend, BackendWrapper) and not isinstance(backend, CachingBackend):
            backend = backend.inner
        return {"hits": backend.hits, "misses": backend.misses} if isinstance(backend, CachingBackend) else None


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# Entry points ---------------------------------------------------------------------------------------
def optimize(config: RunConfig, backend: Backend | None = None) -> RunResult:
    """Run one optimization as configured; ``backend`` overrides ``config.backend`` (for tests).

    Raises :class:`RunInterrupted` (a KeyboardInterrupt) when Ctrl-C stops it.
    """
    return _execute(config, backend, resuming=False)


def resume(out: str | Path, backend: Backend | None = None, **changes: object) -> RunResult:
    """Continue the run in directory ``out`` from its last checkpoint, as configured in its config.toml.

    ``changes`` may set quiet, jsonl and device; everything else is the run's own.
    """
    out = Path(out)
    directory = RunDirectory(out)
    directory.refuse_changed_settings(changes)
    saved = directory.settings()
    config = RunConfig(**{**saved, **changes, "out": str(out)})
    return _execute(config, backend, resuming=True, changed={name: value for name, value in changes.items()
                                                             if saved.get(name, getattr(RunConfig, name)) != value})


class FailureLog:
    """The ``on_failure`` hook of an HTTP backend built from a URL: each failed attempt becomes an
    ``http_failure`` journal line. Events that come before the journal exists (the backend's metadata
    requests) wait in a buffer until :meth:`attach`. Called from the client's event-loop thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._journal: Journal | None = None
        self._pending: list[dict] = []

    def __call__(self, event: dict) -> None:
        fields = {key: value for key, value in event.items() if key != "event"}
        with self._lock:
            if self._journal is None:
                self._pending.append(fields)
                return
        self._journal.write("http_failure", **fields)

    def attach(self, journal: Journal) -> None:
        with self._lock:
            self._journal, pending, self._pending = journal, self._pending, []
        for fields in pending:
            journal.write("http_failure", **fields)


def _execute(config: RunConfig, backend: Backend | None, resuming: bool, changed: dict | None = None) -> RunResult:
    """Build everything and check it before the first query; then run (or resume) the phases."""
    config.check()
    failures = FailureLog() if backend is None and is_url(config.backend) else None
    http_options = {name: getattr(config, name) for name in HTTP_OPTIONS}
    if failures is not None:
        http_options["on_failure"] = failures
    classes = None
    if backend is None and scores_the_class_names(config):
        classes = task_classes(config.data)
        http_options["labels"] = config.labels or classes  # a zero-shot server's candidates: a labels file, or --data
    model = backend or answers_as_configured(make_backend(config.backend, device=config.device, class_names=classes,
                                                          template=config.template, **http_options), config)
    try:
        return _build_and_run(config, model, failures, resuming, changed or {})
    finally:
        if backend is None:
            model.close()  # an HTTP backend's connections and event loop thread, also when a check failed


ZERO_SHOT_FORMATS = ("hf-zero-shot", "openai-chat")  # formats whose labels are the classes asked about


def scores_the_class_names(config: RunConfig) -> bool:
    """Whether the backend is a zero-shot one over the task's classes: ``clip:DIR``, or a zero-shot format's URL."""
    return config.backend.startswith("clip:") or (is_url(config.backend) and config.format in ZERO_SHOT_FORMATS)


def answers_as_configured(model: Backend, config: RunConfig) -> Backend:
    """The backend built from the configuration, in its wrappers: a partial API simulated (``--top-k-only``,
    ``--label-only``), then the cache (``--cache``), below the budget's counter and the journal, so that the
    budget and a resume count every image asked for while a repeated one is not paid for twice. A backend
    passed to :func:`optimize` is used as given: wrap it yourself."""
    if config.top_k_only is not None:
        model = TopKBackend(model, config.top_k_only)
    if config.label_only:
        model = LabelOnlyBackend(model)
    return CachingBackend(model) if config.cache else model


def _build_and_run(config: RunConfig, model: Backend, failures: FailureLog | None, resuming: bool,
                   changed: dict) -> RunResult:
    canvas_size = pixel_size(model.image_size)
    prompt = build_prompt(config, canvas_size)
    loss_fn = loss_of(config)
    mapping: OutputMapping = MAPPINGS.get(config.mapping)(
        **MAPPINGS.parse_options(config.mapping, config.mapping_options, "--mapping-options"))
    head = None
    if mapping.searched_with:  # e.g. the linear head: search with another mapping, refit the head at the end
        head, mapping = mapping, MAPPINGS.get(mapping.searched_with)()
    method = OPTIMIZERS.factory_of(config.optimizer)
    gradients, shadow = method.needs_gradients, method.trains_on_surrogate
    local = shadow_model(config, list(model.labels)) if shadow else None
    torch_model = (local.surrogate if local is not None else torch_model_of(model)) if gradients else None
    optimizer = _make_search(config, prompt.initial(), torch_model)
    candidates = optimizer.candidates_per_step
    if shadow:
        splits, plan = load_splits(config, prompt, lambda data: ShadowPlan.make(config, len(data), len(data.classes)))
    else:
        splits, plan = load_splits(config, prompt, lambda data: BudgetPlan.make(
            config, len(data), len(data.classes), candidates, head_stage=head is not None))
    config = resolve(config, canvas_size, splits, plan)
    prior = surrogate_prior(config, prompt, mapping, splits, list(model.labels)) if optimizer.accepts_prior else None

    out = Path(config.out) if config.out else None
    directory = RunDirectory(out) if out is not None else None
    with directory.lock() if directory is not None else nullcontext():  # before the checkpoint is read: one process
        state: RunState | None = None
        if directory is not None and directory.holds_run():
            if not resuming:
                raise ConfigurationError(f"--out {out} already holds a run; continue it with `bbvp optimize --resume "
                                         f"{out}`, or choose another --out")
            state = load_checkpoint(directory.checkpoint)
            directory.check_same_run(state.config, config)
        if state is None:
            state = RunState(config=config.to_dict(), phase="mapping", rng=np.random.default_rng(config.seed),
                             optimizer=optimizer, mapping=mapping, head=head, buffer=ScoreBuffer(plan.mapping),
                             ledger=Ledger(), budget_plan=plan.to_dict(),
                             prior_rng=prior.rng if prior else np.random.default_rng(config.seed + 1) if shadow else None,
                             shadow=ShadowState(local.adapter) if local is not None else None)
        if prior is not None:
            assert isinstance(state.optimizer, Optimizer), "only a search accepts a prior (accepts_prior)"
            prior.mapping, prior.rng = state.mapping, state.prior_rng
            state.optimizer.prior = prior.direction
        if torch_model is not None:
            assert isinstance(state.optimizer, Whitebox), "a torch model is built for a gradient method only"
            state.optimizer.to(torch_model.device)
        if local is not None:
            assert state.shadow is not None, "a shadow run's state has its shadow state from the start"
            local.adapter = state.shadow.adapter  # the adapter fitted so far, after a resume

        journal = _open_journal(config, directory, state, plan, resuming, changed)
        if failures is not None:
            failures.attach(journal)
        try:
            with StopRequest() as stop:
                return Run(config, model, prompt, splits, plan, loss_fn, state, out, journal, stop, local).execute()
        finally:
            journal.close()


def _make_search(config: RunConfig, x0: np.ndarray, torch_model: TorchClassifierBackend | None) -> Optimizer | Whitebox:
    """The run's optimizer at the initial prompt ``x0``: a gradient method on ``torch_model`` (the target's own
    model, or the shadow method's surrogate), else a search with ``--optimizer-options``."""
    method = OPTIMIZERS.factory_of(config.optimizer)
    if torch_model is not None:
        torch_model.model.requires_grad_(False)
        return method(x0, config.lr, torch_model.device)
    return make_optimizer(config.optimizer, x0, seed=config.seed, **OPTIMIZERS.parse_options(
        config.optimizer, config.optimizer_options, "--optimizer-options"))


def _open_journal(config: RunConfig, directory: RunDirectory | None, state: RunState, plan: Plan,
                  resuming: bool, changed: dict) -> Journal:
    """The run's journal, its first record written: ``start``, or ``resume`` with the images a crash lost."""
    journal = Journal(directory.journal if directory is not None else None, echo=sys.stdout if config.jsonl else None,
                      append=resuming)
    if resuming:
        lost = count_lost_images(state, directory.journal) if directory is not None else 0
        if changed and directory is not None:  # settings that do not change what the run computes
            directory.write_settings(config)  # the next resume keeps them
        journal.write("resume", time=now(), phase=state.phase, step=state.steps, images_lost=lost,
                      images=state.ledger.learning_images, changed=changed)
    else:
        if directory is not None:
            directory.write_settings(config)
        journal.write("start", time=now(), budget=config.budget, step_images=plan.step_images, plan=plan.to_dict())
    return journal


def count_lost_images(state: RunState, journal: Path) -> int:
    """Book the images that the journal shows were sent after the checkpoint (maybe paid for); returns them.

    The validation schedule moves by as many images, so the resumed run validates at the same steps.
    Resumes are counted from the journal's ``resume`` lines: one that died before its first checkpoint
    left no trace in the checkpoint.
    """
    entries = read_journal(journal) if journal.exists() else []
    learning_before = state.ledger.learning_images
    lost = state.ledger.book_lost(entries)
    if state.phase == "optimization":
        state.next_validation += state.ledger.learning_images - learning_before
    state.images_lost += lost
    state.resumes = 1 + sum(entry.get("event") == "resume" for entry in entries)
    state.ledger.restart_clock()
    return lost
