"""Stopping the thaw loop when asked (SIGTERM, SIGINT: thawline.stopping): the ranks agree,
the epoch as it stands is checkpointed so that it resumes at the next step, and the error says
where the checkpoint is and how to resume.

A mixin of the thaw loop's trainer (training/thaw_trainer.py), which owns the state it reads.
"""

from __future__ import annotations

import torch

from thawline.stopping import interrupted, requested


class Stoppable:
    """``_stop_agreed`` between steps and epochs; ``_stop_mid_epoch`` checkpoints and raises."""

    def _stop_agreed(self) -> bool:
        """Whether a stop was asked for here (or, under torchrun, in any process)."""
        asked = requested() is not None
        if self.world.size == 1:
            return asked
        return bool(self.world.all_sum(torch.tensor(float(asked), device=self.device)) > 0)

    def _stop_mid_epoch(self, steps: int, total: float, generator: torch.Generator) -> None:
        """Checkpoint the epoch as it stands (resumable at step ``steps``), then stop."""
        self.step, self.partial_loss, self.epoch_generator = steps, total, generator.get_state()
        self._checkpoint(self.folder, {})
        raise interrupted(self._resume_hint(f"epoch {self.epoch + 1}, step {steps} of "
                                            f"{self.steps}"))  # fmt: skip

    def _resume_hint(self, where: str) -> str:
        return (f"{self.label} checkpoint at {where} written to {self.folder}; rerun (dvc "
                f"repro, or thawline stage {self.label}) to resume from it")  # fmt: skip
