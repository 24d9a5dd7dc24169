"""Mixup / CutMix and RandAugment for fine-tuning batches, as timm's recipes use them
(``finetune.mixup_alpha``, ``cutmix_alpha``, ``randaugment``; all off by default).

- Mixup and CutMix are ``timm.data.Mixup`` in batch mode: one mixing weight per batch, CutMix
  or Mixup chosen per batch when both are on. Targets become class probabilities; the loss is
  the same cross-entropy (label smoothing applied once, by it).
- RandAugment is timm's ``rand_augment_transform`` from a config string (``rand-m9-mstd0.5``:
  magnitude 9, its noise), applied to each stored uint8 image before resizing.

Their random draws come from Python's and numpy's generators, which the trainer seeds and every
checkpoint saves, so a resumed run draws the same. Phases on cached activations run live when
either is on: the cache holds fixed views, and neither a mixed batch nor a RandAugment draw is
one of them.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import numpy as np
import torch

from thawline.config import FinetuneParams
from thawline.errors import ConfigError
from thawline.models.preprocess import Preprocess
from thawline.training.batches import training_batch


def make_mixer(opts: FinetuneParams, num_classes: int) -> Any | None:
    """timm's Mixup for ``opts``, or None when both alphas are 0."""
    if not (opts.mixup_alpha or opts.cutmix_alpha):
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=opts.mixup_alpha, cutmix_alpha=opts.cutmix_alpha, mode="batch",
        label_smoothing=0.0, num_classes=num_classes,  # the loss smooths, once
    )  # fmt: skip


def make_randaugment(opts: FinetuneParams) -> Any | None:
    """timm's RandAugment for ``opts.randaugment``, or None."""
    if not opts.randaugment:
        return None
    from timm.data.auto_augment import rand_augment_transform

    return rand_augment_transform(opts.randaugment, {"img_mean": (128, 128, 128)})


def rand_augmented(images: torch.Tensor, transform) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]``, each image through ``transform`` (PIL in, PIL out)."""
    from PIL import Image

    out = []
    for image in images.cpu():
        picture = Image.fromarray(image.permute(1, 2, 0).numpy())
        out.append(torch.from_numpy(np.asarray(transform(picture)).copy()).permute(2, 0, 1))
    return torch.stack(out).to(images.device)


def uses_mixing(opts: FinetuneParams) -> bool:
    return bool(opts.mixup_alpha or opts.cutmix_alpha or opts.randaugment)


class TrainingBatches:
    """The training batches of the fine-tuning trainer (which sets the attributes used here):
    cached activations, or the stored images RandAugmented, resized, flipped and shifted, then
    Mixup / CutMix."""

    mixer: Any = None
    randaugment: Any = None

    def _start_batches(self) -> None:
        if not uses_mixing(self.opts):
            return
        if self.model.modality != "image":
            raise ConfigError("finetune.mixup_alpha, cutmix_alpha and randaugment mix images; "
                              "set them to 0 / null for a text model")  # fmt: skip
        random.seed(self.seed + self.world.rank)  # timm draws from these generators
        np.random.seed(self.seed + self.world.rank)
        self.mixer = make_mixer(self.opts, len(self.model.classes))
        self.randaugment = make_randaugment(self.opts)

    def _phase_preprocess(self, phase: int) -> Preprocess:
        """The model's preprocessing at the phase's input size (progressive resizing)."""
        size, own = self.timeline.phases[phase].image_size, self.model.preprocess
        return own if not size or size == own.size else dataclasses.replace(own, size=size)

    def _training_batch(self, idx: torch.Tensor, source, views, generator, preprocess):
        """Inputs and targets (class indices, or probabilities after Mixup) of one step."""
        labels = self.train[1][idx].to(self.device)
        if source is not None:
            return source.batch(idx, views, self.device), labels
        images = self.train[0][idx]
        if self.randaugment is not None:
            images = rand_augmented(images, self.randaugment)
        x = training_batch(
            images.to(self.device), preprocess, augment=self.opts.augment,
            max_shift=self.opts.max_shift, generator=generator,
        )  # fmt: skip
        if self.mixer is not None:
            x, labels = self.mixer(x, labels)
        return x, labels
