"""The shadow method's phases, after the mapping and the baseline validation that every run has.

Read as a list, each round being three phases, each a unit over :class:`RunState` with a checkpoint
after it (and within it, every ``CHECKPOINT_STEPS`` white-box steps or answered query):

1. **distil**: the label adapter of the surrogate is fitted (KL) to every answer the target gave so
   far: the mapping images under the initial prompt (priming), then the training images under each
   prompt the method sent (refitting where the search goes). Local compute only.
2. **transfer**: the prompt is trained white-box on the shadow (surrogate + adapter) for ``--epochs``
   epochs through the search mapping fitted on the target's scores (Adam, as the white-box reference).
   Local compute only; the prompt and its Adam state carry over from round to round.
3. **verify**: the target scores the mapping images and the validation split under the trained
   prompt. Its answers on the mapping images are the next round's distillation data and this prompt's
   head data; the validation picks the best prompt under the search mapping.

4. **correct** (once, after the last round, if the plan holds a step of it): guided steps on the target
   (:class:`blackbox_vp.optimizers.guided.Guided`, P-RGF's prior) from the best round's prompt, the
   shadow's gradient as the prior direction, each scored on one minibatch; then a last **verify** of
   where they led, a round like the others for the head to judge.

Then **head** (:meth:`ShadowPhases.choose_head`): with the linear head, each round's prompt gets a head
fitted on its own mapping-image scores, judged as the search method's head stage is (5-fold
cross-validation on the mapping images plus the validation split, paired with the initial prompt's),
and the best is kept only if it beats the initial prompt's head; then the test, as in every run.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from blackbox_vp.mappings import LinearHeadMapping, OutputMapping
from blackbox_vp.optimizers.guided import Guided
from blackbox_vp.optimizers.whitebox import ShadowTraining
from blackbox_vp.run_setup import ShadowPlan
from blackbox_vp.run_state import ShadowState
from blackbox_vp.scoring import correct_count, mapped_accuracy
from blackbox_vp.shadow import ShadowModel
from blackbox_vp.surrogate import SurrogatePrior

if TYPE_CHECKING:
    from blackbox_vp.run import Run

CHECKPOINT_STEPS = 8  # white-box steps between checkpoints in the transfer phase
TRANSFER_HEAD_SCALE_QUANTILE = 0.5  # --transfer-head-l2: the training head's feature scales floored at their median


class ShadowPhases:
    """The phases ``distil``, ``transfer``, ``verify`` and ``head`` of a run of the shadow method."""

    def __init__(self, run: Run, model: ShadowModel, plan: ShadowPlan):
        self.run, self.model, self.plan = run, model, plan
        rng = run.state.prior_rng
        if rng is None:
            raise RuntimeError("a shadow run's state has the surrogate prior's generator from its start")
        self.prior = SurrogatePrior(model, run.prompt, run.state.mapping, run.loss_fn, run.splits.train,
                                    plan.batch_size, rng)

    @property
    def shadow(self) -> ShadowState:
        """The shadow method's progress in the run state, set when its run starts."""
        shadow = self.run.state.shadow
        if shadow is None:
            raise RuntimeError("the shadow method's state is set when its run starts (RunState.shadow)")
        return shadow

    def table(self) -> dict:
        return {"distil": self.distil, "transfer": self.transfer, "verify": self.verify, "correct": self.correct,
                "head": self.choose_head}

    def distil(self) -> None:
        """Fit the adapter to every answer so far; first, the surrogate's features of answered images it has not seen."""
        run, state, shadow = self.run, self.run.state, self.shadow
        if not run.learning.fits(self.verification_left()):
            run.adjust("rounds", f"{shadow.round} of {self.plan.rounds}: the images counted twice after a crash left "
                       f"{run.learning.remaining}, and a round sends {self.plan.round_images}")
            run.end_phase("head")
            return
        chosen = run.splits.train.images[run.mapping_images]
        with state.ledger.during("surrogate"):
            while len(shadow.features) < len(shadow.answers):
                theta = self.prompt_of(len(shadow.features))
                shadow.features.append(self.model.features(run.prompt.apply(theta, chosen)))
            newest = self.model.disagreement(shadow.features[-1], shadow.answers[-1])
            features, answers = torch.cat(shadow.features), torch.cat(shadow.answers)
            after = shadow.adapter.fit(features, answers)
        run.journal.write("distil", round=shadow.round + 1, answers=len(answers), kl_newest_before=round(newest, 4),
                          kl_after=round(after, 4))
        run.end_phase("transfer")

    def verification_left(self) -> int:
        """Images the verification of the round in progress has still to send (fewer after a crash in it)."""
        shadow = self.shadow
        keys = (f"verify:{shadow.round}:mapping", f"validation:{shadow.round + 1}")
        return self.plan.round_images - sum(self.run.answered(key) for key in keys)

    def prompt_of(self, answer: int) -> np.ndarray:
        """The prompt the ``answer``-th answers were given under: the initial one, then each round's."""
        return self.run.prompt.initial() if answer == 0 else self.shadow.rounds[answer - 1]["theta"]

    def transfer(self) -> None:
        """``--epochs`` epochs of white-box steps on the shadow; stops between steps on Ctrl-C.

        Through the search mapping fitted on the target's answers, or with ``--transfer-head-l2`` through a linear
        head fitted on the shadow's own answers under the prompt as it is at the start of each epoch."""
        run, state, shadow, train = self.run, self.run.state, self.shadow, self.run.splits.train
        epoch_steps = -(-len(train) // self.plan.batch_size)
        steps = self.plan.epochs * epoch_steps
        losses = []
        with state.ledger.during("surrogate"):
            while shadow.transfer_steps < steps:
                if run.stop.requested:
                    return
                mapping = self.transfer_mapping(epoch_steps)
                batch = state.rng.choice(len(train), size=min(self.plan.batch_size, len(train)), replace=False)
                loss, _ = cast(ShadowTraining, state.optimizer).step(self.model, run.prompt, mapping, run.loss_fn,
                                               train.images[batch], train.labels[batch])
                losses.append(loss)
                shadow.transfer_steps += 1
                run.progress.set_postfix_str(f"round {shadow.round + 1}/{self.plan.rounds}: training on the "
                                             f"surrogate, step {shadow.transfer_steps}/{steps}, loss {loss:.3f}")
                if shadow.transfer_steps % CHECKPOINT_STEPS == 0:
                    run.checkpoint()
        run.journal.write("transfer", round=shadow.round + 1, steps=steps,
                          through="the search mapping" if run.config.transfer_head_l2 is None else "the shadow's head",
                          loss=round(float(np.mean(losses)), 4) if losses else None)
        shadow.transfer_steps = 0
        run.end_phase("verify")

    def transfer_mapping(self, epoch_steps: int) -> OutputMapping:
        """What the next step trains through: the search mapping, or with ``--transfer-head-l2`` the shadow's own
        head, refitted at the start of each epoch (kept in the state, so a resumed epoch trains through the same)."""
        l2, shadow = self.run.config.transfer_head_l2, self.shadow
        if l2 is None:
            return self.run.state.mapping
        if shadow.transfer_head is None or shadow.transfer_steps % epoch_steps == 0:
            shadow.transfer_head = self.shadow_head(l2)
        return shadow.transfer_head

    def shadow_head(self, l2: float) -> LinearHeadMapping:
        """A linear head fitted on the shadow's answers to every training image under the current prompt: the head
        the target would get, as the shadow predicts it. Its feature scales are floored at their median
        (``TRANSFER_HEAD_SCALE_QUANTILE``), so that the prompt cannot gain by moving the labels whose
        log-probabilities hardly vary."""
        run, train = self.run, self.run.splits.train
        theta = cast(ShadowTraining, self.run.state.optimizer).recommend()
        answers = self.model.answers(run.prompt.apply(theta[None], train.images))
        head = LinearHeadMapping(l2=l2, scale_quantile=TRANSFER_HEAD_SCALE_QUANTILE)
        return head.fit(answers.double(), torch.from_numpy(train.labels), len(train.classes))

    def verify(self) -> None:
        """The target scores the mapping images and the validation split under the trained (or corrected) prompt."""
        run, state, shadow, train = self.run, self.run.state, self.shadow, self.run.splits.train
        if not run.learning.fits(self.verification_left()):  # only after a crash in it, its images counted twice
            run.adjust(f"round {shadow.round + 1}", f"not verified: the images counted twice after a crash left "
                       f"{run.learning.remaining}, and its verification needs {self.verification_left()} more")
            run.end_phase("head")
            return
        theta = (shadow.correction or state.optimizer).recommend()
        with state.ledger.during("optimization"):
            answers = run.scored(f"verify:{shadow.round}:mapping", theta, train.images[run.mapping_images])
        state.steps = shadow.round + 1
        if state.mapping.refit:  # an iterative mapping follows the prompt (ILM-VP): refitted on its own answers
            state.mapping.fit(answers, torch.from_numpy(train.labels[run.mapping_images]), len(train.classes))
        val_accuracy, val_scores = run.validate(theta, None)
        record: dict[str, Any] = {"round": shadow.round + 1, "theta": theta, "corrected": shadow.correction is not None,
                  "val_accuracy": val_accuracy}
        if state.head is not None:
            record["head"] = self.head_on(answers.to(torch.float32))
            record["head_cv"] = run.cross_validate_head(answers.to(torch.float32).double())
            record["head_val"] = correct_count(record["head"], val_scores, run.splits.val.labels)
        shadow.answers.append(answers.to(torch.float32))
        shadow.rounds.append(record)
        shadow.round += 1
        run.journal.write("step", step=state.steps, images=run.learning.images_sent, val_accuracy=val_accuracy,
                          corrected=record["corrected"], elapsed=round(run.elapsed(), 3))
        if shadow.round < self.plan.rounds:
            run.end_phase("distil")
        else:
            run.end_phase("correct" if self.plan.correction_steps and shadow.correction is None else "head")

    def correct(self) -> None:
        """Guided steps on the target from the best round's prompt, the shadow's gradient as the prior; stops
        between steps on Ctrl-C. Then the corrected prompt is verified, unless no step could be taken."""
        run, state, shadow, plan, train = self.run, self.run.state, self.shadow, self.plan, self.run.splits.train
        if shadow.correction is None:
            shadow.correction = Guided(self.best_round()["theta"], seed=run.config.seed)
        optimizer = shadow.correction
        optimizer.prior = self.prior.direction  # not in the checkpoint: a torch model
        with state.ledger.during("optimization"):
            while (optimizer.steps < plan.correction_steps and not run.stop.requested
                   and run.learning.fits(plan.correction_step_images + plan.round_images)):
                batch = state.rng.choice(len(train), size=min(plan.batch_size, len(train)), replace=False)
                *_, loss = run.query_step(optimizer, batch)
                run.journal.write("correct", step=optimizer.steps, images=run.learning.images_sent,
                                  loss=round(loss, 4), step_size=optimizer.step_size)
                run.show(loss)
                run.checkpoint()
        if run.stop.requested:
            return
        if optimizer.steps < plan.correction_steps:
            run.adjust("correction", f"{optimizer.steps} of {plan.correction_steps} steps: the images counted twice "
                       f"after a crash left {run.learning.remaining}, and a step with the verification takes "
                       f"{plan.correction_step_images + plan.round_images}")
        run.end_phase("verify" if optimizer.steps and run.learning.fits(plan.round_images) else "head")

    def best_round(self) -> dict:
        """The round whose prompt is best: on the pooled judgement of its head, else on validation accuracy
        under the search mapping (the first of equals)."""
        return max(self.shadow.rounds,
                   key=(lambda record: record["head_cv"] + record["head_val"]) if self.run.state.head is not None
                   else (lambda record: record["val_accuracy"]))

    def head_on(self, answers: torch.Tensor):
        """A head fitted on a prompt's scores of the mapping images."""
        run, train = self.run, self.run.splits.train
        labels = torch.from_numpy(train.labels[run.mapping_images])
        return copy.deepcopy(run.head).fit(answers.double(), labels, len(train.classes))

    def choose_head(self) -> None:
        """Keep the round whose head is best on the pooled judgement, if it beats the initial prompt's head."""
        run, state, selection, val = self.run, self.run.state, self.run.state.selection, self.run.splits.val
        if state.head is None:
            run.refit_head()  # kept by validation under the search mapping, as for a search
            return
        initial, rounds = run.initial_head(), self.shadow.rounds
        judged = len(run.mapping_images) + len(val)
        initial_pooled = (initial.cv_correct + correct_count(initial.head, initial.val_scores, val.labels)) / judged
        selection.baseline_val = mapped_accuracy(initial.head, initial.val_scores, val.labels)
        pooled = {record["round"]: (record["head_cv"] + record["head_val"]) / judged for record in rounds}
        best = self.best_round() if rounds else None
        verdict = ", ".join(f"round {record['round']}{' (corrected)' if record['corrected'] else ''} "
                            f"{pooled[record['round']]:.4f}" for record in rounds)
        why = (f"pooled accuracy of each prompt's head (5-fold cross-validation on {len(run.mapping_images)} "
               f"mapping images and {len(val)} validation images): {verdict or 'no round'}; the initial prompt's "
               f"{initial_pooled:.4f}")
        if best is not None and pooled[best["round"]] > initial_pooled:
            selection.best_theta, selection.best_mapping = best["theta"], best["head"]
            selection.best_val = best["head_val"] / len(val)
            state.kept = {"prompt": "searched", "why": f"round {best['round']}: {why}"}
        else:
            selection.best_theta, selection.best_mapping = run.prompt.initial(), initial.head
            selection.best_val = selection.baseline_val
            state.kept = {"prompt": "initial", "why": why}
        selection.history.append({"images": run.learning.images_sent, "step": state.steps, "head": True,
                                  "val_accuracy": selection.best_val, "loss": None,
                                  "pooled_accuracy": pooled[best["round"]] if best is not None else None,
                                  "initial_pooled_accuracy": initial_pooled})
        run.end_phase("test")
