"""The LR range test of one fine-tuning phase (``lr: auto`` in a phase, or ``base_lr: auto``).

When an ``auto`` phase starts, the model as it stands (the previous phase's result) is swept
with that phase's frozen groups: fastai's schedule and rules (training/lr_find.py) over
``STEPS`` training batches, made as training makes them (augmentation included), each
unfrozen group at its discriminative ratio to the head (``lr_decay``), AdamW with the phase's
weight decay and the loss's label smoothing, gradients clipped as in training. Then the
weights, buffers and random streams are put back as they were: the sweep only reads the model.
fastai's ``Learner.lr_find`` is the reference; it runs once per call on the learner as it is.
"""

from __future__ import annotations

import logging
import math
import time

import torch
from torch import nn

from thawline.config import FinetuneParams
from thawline.devices import Precision, autocast
from thawline.models.classifier import Classifier
from thawline.models.preprocess import Preprocess
from thawline.training.batches import training_batch
from thawline.training.lr_find import END, START, STEPS, LRFinding, lr_sweep, suggest
from thawline.training.phases import Phase
from thawline.training.unfreeze import apply_phase, param_groups

log = logging.getLogger(__name__)


def find_phase_lr(
    model: Classifier,
    train: tuple[torch.Tensor, torch.Tensor],
    phase: Phase,
    ratios: list[float],
    opts: FinetuneParams,
    seed: int,
    precision: Precision,
    steps: int = STEPS,
    preprocess: Preprocess | None = None,
) -> tuple[LRFinding, float]:
    """The range test for ``phase`` of ``model`` (on its device), and its seconds.

    Args:
        model: The classifier as the phase starts; left exactly as it was.
        train: uint8 training images and labels.
        phase: Which groups are unfrozen.
        ratios: Each param group's LR per unit of head LR (0: frozen), stem first, head last.
        opts: The ``finetune`` section (batch size, augmentation, weight decay, clipping...).
        seed: Fixes the batches and their augmentation.
        precision: As training runs.
        preprocess: The phase's input size when it has its own (progressive resizing).
    """
    started = time.perf_counter()
    device = next(model.parameters()).device
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.train()
    apply_phase(model, phase, freeze_bn=opts.freeze_bn, train_depthwise=opts.train_depthwise)
    groups = param_groups(model, opts.weight_decay)
    for group, ratio in zip(groups, ratios, strict=True):
        group["ratio"] = ratio
    optimizer = torch.optim.AdamW([g for g in groups if g["ratio"] > 0])
    loss_fn = nn.CrossEntropyLoss(label_smoothing=opts.label_smoothing)
    images, labels = train
    batch = min(opts.batch_size, len(labels))
    generator = torch.Generator().manual_seed(seed)
    order, position = torch.randperm(len(labels), generator=generator), 0

    def step(lr: float) -> float:
        nonlocal order, position
        if position + batch > len(labels):  # a new pass over the data
            order, position = torch.randperm(len(labels), generator=generator), 0
        idx = order[position : position + batch]
        position += batch
        x = training_batch(
            images[idx].to(device), preprocess or model.preprocess, augment=opts.augment,
            max_shift=opts.max_shift, generator=generator,
        )  # fmt: skip
        for group in optimizer.param_groups:
            group["lr"] = lr * group["ratio"]
        with autocast(device, precision):
            loss = loss_fn(model(x).float(), labels[idx].to(device))
        value = loss.item()
        if not math.isfinite(value):
            return value
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if opts.clip_grad_norm is not None:
            params = [p for p in model.parameters() if p.grad is not None]
            nn.utils.clip_grad_norm_(params, opts.clip_grad_norm)
        optimizer.step()
        return value

    # Dropout draws from the global generators: fork them, so training's stream is untouched.
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            lrs, losses, stopped = lr_sweep(step, START, END, steps)
    finally:
        model.load_state_dict(saved)
        model.zero_grad(set_to_none=True)
    return suggest(lrs, losses, stopped, START), time.perf_counter() - started


class AutoLR:
    """The fine-tuning trainer's part that runs an ``auto`` phase's range test as it starts
    (the trainer sets the attributes used here)."""

    def _find_lr(self, phase: int) -> None:
        """``lr: auto``: the phase's range test, rank 0's answer for every rank; the optimizer's
        LRs of this step follow at once (the scheduler set them from the unscaled ratios)."""
        found, seconds = find_phase_lr(
            self.model, self.train, self.timeline.phases[phase], self.timeline.planned_lrs[phase],
            self.opts, self.seed + phase, self.precision, preprocess=self._phase_preprocess(phase),
        )  # fmt: skip
        lr = self.world.all_sum(torch.tensor(found.valley if self.world.main else 0.0,
                                             dtype=torch.float64, device=self.device))  # fmt: skip
        self.timeline.set_found(phase, float(lr))
        step = self.epoch * self.steps
        for group, param_group in enumerate(self.optimizer.param_groups):
            param_group["lr"] = self.timeline.lr(step, group)
        groups = self.timeline.phases[phase].groups
        self.lr_finds.append({"phase": phase + 1, "groups": groups, "lr": float(lr),
                              "steep": found.steep, "stopped": found.stopped,
                              "seconds": round(seconds, 2), "lrs": found.lrs,
                              "losses": found.losses})  # fmt: skip
        if self.world.main:
            log.info("%s: phase %d (%d groups unfrozen): lr auto: %.3g (fastai's valley; steep "
                     "%.3g; %s) in %.1f s", self.label, phase + 1, groups, float(lr),
                     found.steep, found.stopped, seconds)  # fmt: skip
