"""Never worse than the start: epoch 0, the best epoch's weights, and rolling back a phase.

The starting model (the probe's head on the pretrained backbone) is validated before the first
step: that is epoch 0 of the history and the first "best", so a fine-tune can only return
weights that validate at least as well as what it started from. After each run of a phase
(training/phases.py), a run that ended clearly below the best validation accuracy so far (by
more than ``rollback_tolerance`` and more than two standard errors: noise is not a verdict) goes
back to the best weights, with the optimizer's moments reset (they hold the direction that made
it worse). A run that had improved on its start and then slid is only rewound: the next phase
starts from its best epoch. A run that never beat its start is retried once at
``retry_lr_factor`` times its LR; a retry that ends worse, or a rollback without a factor, stops
the thaw there. A run whose loss
diverges (finite, but over 100x a uniform guess: a too-high LR, which with BatchNorm on its
running statistics shows up as a blow-up rather than a slow slide) is rolled back the same way
at once and retried from the epoch it reached; a retry that diverges too, or a divergence
without a factor, stops the stage with an error, as a NaN/inf always does. Each decision is
logged and kept in ``rollbacks`` (the stage's record and every checkpoint).
"""

from __future__ import annotations

import logging
import math
import time

import torch

from thawline.training.fit_head import NonFiniteLossError
from thawline.training.validate import improved

log = logging.getLogger(__name__)


class NeverWorse:
    """Best-epoch keeping and phase rollback for the fine-tuning trainer (which sets the
    attributes used here)."""

    def _epoch_zero(self) -> None:
        """Validate the starting model: the history's epoch 0 and the first best."""
        started = time.perf_counter()
        metrics = {"epoch": 0, "phase": 0, "unfrozen_groups": 0} | self._validate()
        self.seconds += time.perf_counter() - started
        self.history.append(metrics)
        self.best_epoch, self.best = 0, metrics
        self.best_state = _cpu_copy(self.model.state_dict())

    def _track_best(self, metrics: dict[str, float], index: int) -> None:
        candidate, weights = self._candidate(metrics)  # the raw weights, or their average
        if improved(candidate, self.best):
            self.best_epoch, self.best = self.epoch, candidate
            self.best_state = _cpu_copy(weights.state_dict())
        last_phase = index == len(self.timeline.runs) - 1
        # Early stopping only in the last phase: an earlier phase is followed by a thaw.
        if self.opts.patience and self.val is not None and last_phase:
            self.finished = self.epoch - self.best_epoch >= self.opts.patience

    def _judge_run(self, index: int, metrics: dict[str, float]) -> None:
        """A run that ended clearly below the best so far goes back to the best weights; if it
        never beat what it started from, it is retried once at a lower LR, or the thaw stops."""
        metrics = self._candidate(metrics)[0]  # with EMA: the better of the two weights
        drop = self.best["val_accuracy"] - metrics["val_accuracy"]
        if drop <= self._noise(self.best["val_accuracy"]):
            return
        run = self.timeline.runs[index]
        self._roll_back()
        factor = self.opts.retry_lr_factor
        if self.best_epoch > self.timeline.first_epoch(index):
            action = "rewind"  # it improved, then slid: the next phase starts from its best
        elif factor is not None and not run.retry:
            action = "retry"
            self.timeline.retry(index, factor)
            self.finished = False  # an early stop in this run gives way to its retry
        else:
            action = "stop"
            self.timeline.stop_after(index)
        self._record(self.epoch, run, "ended worse", metrics["val_accuracy"], action)
        if self.world.main:
            then = {"rewind": "going on from there", "retry": f"retry at {factor}x its LR",
                    "stop": "stop thawing"}[action]  # fmt: skip
            log.warning(
                "finetune: phase %d ended at %.4f val accuracy, %.2f points below the best so far "
                "(%.4f, epoch %d): rolled back to epoch %d's weights; %s", run.phase + 1,
                metrics["val_accuracy"], 100 * drop, self.best["val_accuracy"], self.best_epoch,
                self.best_epoch, then,
            )  # fmt: skip

    def _noise(self, accuracy: float) -> float:
        """How far below the best a run may end before it counts as worse: ``rollback_tolerance``
        or two standard errors of a validation accuracy, whichever is larger (500 images at
        0.87: 3 points; 6,000 at 0.92: 0.7)."""
        count = len(self.val[1])
        return max(self.opts.rollback_tolerance, 2 * math.sqrt(accuracy * (1 - accuracy) / count))

    def _retry_diverged(self, err: NonFiniteLossError) -> None:
        """Roll back a run whose loss diverged and retry it at once at a lower LR, or raise."""
        index = self.timeline.run_of(self.epoch)
        run = self.timeline.runs[index]
        factor = self.opts.retry_lr_factor
        if not err.diverged or self.best_state is None or factor is None or run.retry:
            raise err
        self._roll_back()
        self.timeline.retry_now(index, self.epoch - self.timeline.first_epoch(index), factor)
        step = self.epoch * self.steps  # the retry's first step: its warm-up starts again
        for group, param_group in enumerate(self.optimizer.param_groups):
            param_group["lr"] = self.timeline.lr(step, group)
        self.scheduler.last_epoch = step
        self._record(self.epoch + 1, run, str(err).split("; ")[0], None, "retry")
        if self.world.main:
            log.warning(
                "%s: rolled back to epoch %d's weights (val accuracy %.4f); retry at %gx its LR",
                str(err).split("; ")[0], self.best_epoch, self.best["val_accuracy"], factor,
            )  # fmt: skip

    def _roll_back(self) -> None:
        self.model.load_state_dict(self.best_state)
        self._reset_ema(self.best_state)
        self.optimizer.state.clear()  # the moments of the bad stretch would push it back there

    def _record(self, epoch: int, run, reason: str, accuracy: float | None, action: str) -> None:
        self.rollbacks.append({
            "epoch": epoch, "phase": run.phase + 1, "retry": run.retry,
            "reason": reason, "val_accuracy": accuracy,
            "best_val_accuracy": self.best["val_accuracy"], "best_epoch": self.best_epoch,
            "action": action,
        })  # fmt: skip


def _cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in state.items()}
