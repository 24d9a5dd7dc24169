"""What a fine-tune's checkpoint saves and restores, and the plan that names its series.

A *plan* is everything that must match for a checkpoint to continue a run exactly (settings,
phases and LRs, steps, seed, world size, data and starting weights, precision, code); its short
hash names the checkpoint series. :class:`Resumable` is the part of the trainer that writes a
checkpoint after every epoch and restores one: weights, optimizer, scheduler, scaler, every
rank's RNG states, the timeline of runs (with its rollbacks) and the history. A run stopped by
a signal checkpoints mid-epoch under its last complete epoch's name, with the steps done, their
summed loss and the epoch's augmentation generator, so that epoch continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

from thawline.training.checkpoint import (
    Checkpoint,
    CheckpointError,
    clear_checkpoints,
    load_latest,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from thawline.training.unfreeze import unfrozen_groups

# The code a checkpoint's training depends on: changed code starts a new checkpoint series.
log = logging.getLogger(__name__)
CODE = [Path(__file__).parents[1] / name for name in ("training", "models")]


def code_digest() -> str:
    """sha256 of the training and model source files."""
    h = hashlib.sha256()
    for path in sorted(p for folder in CODE for p in folder.rglob("*.py")):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


class Resumable:
    """Checkpointing for the fine-tuning trainer (which sets the attributes used here)."""

    def plan(self) -> dict:
        """What must match for a checkpoint to continue this run exactly."""
        settings = self.opts.model_dump(
            mode="json", exclude={"resume", "keep_checkpoints", "nproc"}
        )  # nproc only says how to launch; the world size below is what counts
        return {
            "settings": settings,
            "phases": self.timeline.planned,  # lr "auto" until a range test finds it
            "lrs": self.timeline.planned_lrs,
            "steps_per_epoch": self.steps,
            "seed": self.seed,
            "world_size": self.world.size,
            "train_size": len(self.train[1]),
            "val_size": 0 if self.val is None else len(self.val[1]),
            "precision": self.precision.name,
            "start": self.start_digest,
            "code": code_digest(),
        }

    def plan_id(self) -> str:
        """A short name for this plan: its checkpoint series' folder."""
        text = json.dumps(self.plan(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def start(self, folder: Path) -> int:
        """Resume from the newest complete checkpoint (or clear them all); the epoch resumed."""
        if not self.opts.resume:
            if self.world.main:
                clear_checkpoints(folder)
            self.world.barrier()
            return 0
        checkpoint = load_latest(folder)
        found = self.world.gather(None if checkpoint is None else checkpoint.path.name)
        if len(set(found)) > 1:
            raise CheckpointError(
                f"{folder}: the processes found different checkpoints ({found}); with several "
                "machines, paths.checkpoints must be on storage that all of them share"
            )
        if checkpoint is None:
            return 0
        self._restore(checkpoint)
        return checkpoint.epoch

    def _restore(self, checkpoint: Checkpoint) -> None:
        state = checkpoint.state
        if state["plan"] != self.plan():
            raise CheckpointError(
                f"{checkpoint.path}: made with other finetune settings, seed, data or precision; "
                "set finetune.resume: false (or delete the checkpoints) to start again"
            )
        self.model.load_state_dict(checkpoint.model)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])
        rng = state["rng"][self.world.rank]  # one per rank (the plan fixes the count)
        set_rng_state(rng)
        self.step, self.partial_loss = state.get("step", 0), state.get("partial_loss", 0.0)
        self.epoch_generator = rng.get("epoch_generator")
        self.epoch, self.seconds = state["epoch"], state["seconds"]
        self.finished = state["finished"]
        self.history, self.best = state["history"], state["best"]
        self.best_epoch = state["best_epoch"]
        self.timeline.load_state(state["timeline"])
        self.timeline.load_found(state.get("found_lrs", []))
        self._load_ema_state(state.get("ema", {}))
        self.lr_finds = state.get("lr_finds", [])
        self.activation_plans = state.get("activation_cache", {})
        self.rollbacks = state["rollbacks"]
        self.best_state = checkpoint.best if checkpoint.best is not None else checkpoint.model
        if self.step and checkpoint.best is None:  # mid-epoch weights are nobody's best
            self.best_state = None

    def _checkpoint(self, folder: Path, metrics: dict[str, float]) -> None:
        state = self.model.state_dict()
        bad = [k for k, v in state.items() if v.is_floating_point() and not v.isfinite().all()]
        if bad:
            self._non_finite(f"weights became non-finite ({bad[:3]}) in epoch {self.epoch}")
        mine = rng_state()
        if self.step:  # mid-epoch: this rank's augmentation draws of the epoch so far
            mine["epoch_generator"] = self.epoch_generator
        rng = self.world.gather(mine)  # every rank's, for an exact resume
        if not self.world.main:
            return
        # The best is this epoch's weights as they are (not their average): no second copy.
        whole_epoch = (self.best_epoch == self.epoch and not self.step
                       and self.best.get("weights", "raw") == "raw")  # fmt: skip
        save_checkpoint(
            folder, self.epoch, state, self._state(rng),
            best=None if whole_epoch else self.best_state, keep=self.opts.keep_checkpoints,
        )  # fmt: skip

    def _state(self, rng: list[dict]) -> dict:
        return {
            "plan": self.plan(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "rng": rng,
            "epoch": self.epoch,
            "step": self.step,
            "partial_loss": self.partial_loss,
            "phase": self.timeline.run_of(self.epoch - 1),
            "unfrozen_groups": unfrozen_groups(self.model),
            "timeline": self.timeline.state(),
            "found_lrs": self.timeline.found_state(),
            "ema": self._ema_state(),  # the averaged weights ({} without finetune.ema)
            "lr_finds": self.lr_finds,
            "activation_cache": self.activation_plans,  # a resumed phase decides as it did
            "rollbacks": self.rollbacks,
            "history": self.history,
            "best_epoch": self.best_epoch,
            "best": self.best,
            "seconds": self.seconds,
            "finished": self.finished,
        }


def remove_other_series(series: Path) -> None:
    """A finished run makes other plans' checkpoints (older params, an interrupted run) moot."""
    for other in series.parent.iterdir() if series.parent.is_dir() else []:
        if other.is_dir() and other != series and not other.name.startswith("."):
            log.info("finetune: removing checkpoints of another plan: %s", other)
            shutil.rmtree(other, ignore_errors=True)
