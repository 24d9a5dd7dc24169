"""One optimizer step of the thaw loop, guarded: autocast, the loss agreed across ranks, a
NaN/inf or diverging loss and a non-finite gradient norm stop the run before the weights move
(training/never_worse.py decides whether a divergence is retried), gradient clipping, fp16's
GradScaler, the schedule and the EMA update.

A mixin of the thaw loop's trainer (training/thaw_trainer.py), which owns the state it reads.
"""

from __future__ import annotations

import torch
from torch import nn

from thawline.devices import autocast
from thawline.training.fit_head import NonFiniteLossError, loss_problem


class GuardedStep:
    """``_step``: one guarded optimizer step; ``_non_finite``: the error that names what to
    change."""

    def _step(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int) -> float:
        with autocast(self.device, self.precision):
            logits = net(x).float()
            loss = self.loss_fn(logits, y)
        # The mean over ranks, so that all of them stop together on a bad loss.
        mean = self.world.all_sum(loss.detach().clone()) / self.world.size
        if problem := loss_problem(mean, logits.shape[1]):
            where = f"{problem} at epoch {self.epoch + 1}, step {step}"
            self._non_finite(where, diverged=bool(torch.isfinite(mean)))
        self.optimizer.zero_grad(set_to_none=True)  # frozen params keep grad None: never stepped
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if self.opts.clip_grad_norm is not None:
            params = [p for p in self.model.parameters() if p.grad is not None]
            norm = nn.utils.clip_grad_norm_(params, self.opts.clip_grad_norm)
            # With a GradScaler an fp16 overflow is expected: the scaler skips that step.
            if self.scaler is None and not torch.isfinite(norm):
                where = f"at epoch {self.epoch + 1}, step {step}"
                self._non_finite(f"gradient norm became {norm.item()} {where}")
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self._update_ema(self.epoch * self.steps + step + 1)
        return mean.item()

    def _non_finite(self, what: str, diverged: bool = False) -> None:
        phase = self.timeline.phase(min(self.epoch, self.timeline.epochs - 1))
        raise NonFiniteLossError(
            f"finetune: {what} (phase LR {phase.lr}); "
            "lower finetune.base_lr (or the phase's lr), keep finetune.clip_grad_norm set, "
            "or use precision fp32",
            diverged=diverged,
        )
