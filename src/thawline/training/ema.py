"""An exponential moving average of the fine-tuned weights (``finetune.ema``), timm's
``ModelEmaV3``, and which of the two weights an epoch offers as its candidate for the best.

The average is updated after every optimizer step, with timm's decay warm-up (power 3/4: about
0.99 after 500 steps, ``ema_decay`` at most), so a short run is not averaged with the starting
weights for long. Every epoch validates both; the better one (validation accuracy, then loss,
as the best epoch is chosen) is what the never-worse bookkeeping sees, and the record's
``best`` says which (``weights``: ``raw`` or ``ema``). A rollback resets the average to the
weights it goes back to. The average lives in every checkpoint, so a resume stays exact.
"""

from __future__ import annotations

import torch
from torch import nn

from thawline.training.validate import improved

WARMUP_POWER = 3 / 4  # timm's advice for runs of under about 200k steps


class WeightAverage:
    """EMA for the fine-tuning trainer (which sets the attributes used here)."""

    ema: nn.Module | None = None  # timm's ModelEmaV3, or None without finetune.ema

    def _start_ema(self) -> None:
        if self.opts.ema:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=self.opts.ema_decay, use_warmup=True,
                                  warmup_power=WARMUP_POWER)  # fmt: skip

    def _update_ema(self, step: int) -> None:
        """After optimizer step ``step`` (1-based, over the whole run)."""
        if self.ema is not None:
            self.ema.update(self.model, step=step)

    def _validate_ema(self) -> dict[str, float]:
        """``ema_val_loss`` and ``ema_val_accuracy`` (nothing without EMA)."""
        if self.ema is None:
            return {}
        scored = self._validate(self.ema.module)
        return {f"ema_{k}": v for k, v in scored.items()}

    def _candidate(self, metrics: dict[str, float]) -> tuple[dict, nn.Module]:
        """The epoch's offer for the best: its metrics as judged, and whose weights they are."""
        if self.ema is None or "ema_val_accuracy" not in metrics:
            return metrics, self.model
        averaged = {"val_accuracy": metrics["ema_val_accuracy"],
                    "val_loss": metrics["ema_val_loss"]}  # fmt: skip
        if improved(averaged, {k: metrics[k] for k in ("val_accuracy", "val_loss")}):
            return metrics | averaged | {"weights": "ema"}, self.ema.module
        return metrics | {"weights": "raw"}, self.model

    def _reset_ema(self, state: dict[str, torch.Tensor]) -> None:
        """After a rollback: the average starts again from the weights gone back to."""
        if self.ema is not None:
            self.ema.module.load_state_dict(state)

    def _ema_state(self) -> dict[str, torch.Tensor]:
        if self.ema is None:
            return {}
        return {k: v.detach().cpu().clone() for k, v in self.ema.module.state_dict().items()}

    def _load_ema_state(self, state: dict[str, torch.Tensor]) -> None:
        if self.ema is not None and state:
            self.ema.module.load_state_dict(state)
