"""The params sections of training: the head, fine-tuning and the from-scratch baseline."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from thawline.config.base import Section

# timm's RandAugment config: rand, then -<key><number> parts (m9, n2, mstd0.5, inc1)
RANDAUGMENT = r"^rand(-[a-z]+[0-9.]+)*$"


class HeadSweepParams(Section):
    """A small grid trained from the same cache; the best by validation accuracy is kept."""

    enabled: bool = False
    lr: list[Annotated[float, Field(gt=0)]] = Field(default=[3e-4, 1e-3, 3e-3], min_length=1)
    weight_decay: list[Annotated[float, Field(ge=0)]] = Field(default=[0.0, 1e-4], min_length=1)
    type: list[Literal["linear", "mlp"]] = Field(default=["linear", "mlp"], min_length=1)


class HeadParams(Section):
    """The classifier head trained on cached features (``train_head``)."""

    type: Literal["linear", "mlp"] = "linear"
    hidden: list[Annotated[int, Field(gt=0)]] = Field(default=[512], min_length=1)  # mlp only
    dropout: float = Field(default=0.2, ge=0, lt=1)
    # auto: fastai's LR range test on the cached features (a second or so), its "valley"
    # suggestion is used and recorded (head.json, MLflow, lr_find.png); `thawline lr-find` shows it.
    lr: Annotated[float, Field(gt=0, le=10)] | Literal["auto"] = 1e-3
    weight_decay: float = Field(default=1e-4, ge=0)
    epochs: int = Field(default=30, gt=0)
    # auto: about 16 steps an epoch (training rows / 16 as a power of two, 32 to 512); a fixed
    # 512 gives 1,000 images 2 steps an epoch, 60 in all: a probe far from converged.
    batch_size: Annotated[int, Field(gt=0)] | Literal["auto"] = "auto"
    label_smoothing: float = Field(default=0.1, ge=0, lt=1)
    # cosine: warm-up then cosine decay (one-cycle shape); constant: the tutorials' fixed LR.
    schedule: Literal["cosine", "constant"] = "cosine"
    # balanced: weight the loss by inverse class frequency (imbalanced data, e.g. X-rays).
    class_weights: Literal["none", "balanced"] = "none"
    patience: int = Field(default=5, ge=0)  # epochs without val improvement; 0 = never stop early
    sweep: HeadSweepParams = HeadSweepParams()


class PhaseParams(Section):
    """One phase of fine-tuning: how many layer groups are unfrozen (from the top), how long."""

    groups: int = Field(ge=-1)  # unfrozen groups counted from the top; 0 = head only; -1 = all
    epochs: int = Field(gt=0)
    # The head's LR; backbone groups get it times the decay. auto: an LR range test when the
    # phase starts, with its frozen groups (fastai's valley), recorded in record.json.
    lr: Annotated[float, Field(gt=0, le=10)] | Literal["auto"]
    # Progressive resizing: this phase trains at its own input size (e.g. 32, then 48, then 64);
    # null = finetune.image_size. Validation and the saved model use finetune.image_size.
    image_size: int | None = Field(default=None, ge=16, le=2048)


class FinetuneParams(Section):
    """Fine-tuning the backbone and head together (``finetune``), starting from ``train_head``."""

    # auto: full, unless there is no val split, fewer than 100 training images, or a probe at
    # auto_probe_good already (then head_only); measured in bench/strategies.py. head_only: the
    # head from train_head is the model (no image training); gradual: head only, then thaw
    # groups from the top until all are trainable; full: everything at once; custom: ``phases``.
    strategy: Literal["auto", "head_only", "gradual", "full", "custom"] = "auto"
    phases: list[PhaseParams] = Field(default_factory=list)  # strategy: custom only
    # Text backbones: what a thawed layer trains: its weights (layers), or LoRA adapters on its
    # attention and feed-forward projections (lora, peft), merged into the weights at the end.
    thaw: Literal["layers", "lora"] = "layers"
    lora_rank: int = Field(default=8, gt=0, le=256)
    lora_alpha: int = Field(default=16, gt=0)
    lora_dropout: float = Field(default=0.0, ge=0, lt=1)
    # Dropout on attention weights while training (BERT's attention_probs_dropout_prob is 0.1;
    # timm's ViTs: attn_drop). Above 0, PyTorch's fused attention cannot run and a mask of
    # batch x heads x tokens^2 is drawn in every layer: MiniLM trained 2.1-2.4x slower (Intel Xeon).
    # null keeps the model's own. Models without attention (CNNs) are unaffected.
    attention_dropout: float | None = Field(default=0.0, ge=0, lt=1)
    # presets only; auto: enough epochs that each phase sees phase_images images (one epoch of a
    # large set, several of a small one: 1,000 images at batch 64 are 15 steps an epoch).
    epochs_per_phase: Annotated[int, Field(gt=0)] | Literal["auto"] = "auto"
    phase_images: int = Field(default=10_000, gt=0)
    # gradual: thawing steps after the head-only phase; null = one layer group per step.
    gradual_steps: int | None = Field(default=3, gt=0)
    # presets only: every phase's LR; auto: each phase's own range test (as a phase's lr: auto)
    base_lr: Annotated[float, Field(gt=0, le=10)] | Literal["auto"] = 1e-3
    # Discriminative LRs: group LR = phase LR * lr_decay ** (distance from the top; head = 0)...
    lr_decay: float = Field(default=0.8, gt=0, le=1)
    # ...or explicit absolute LRs per backbone group, stem first (replaces lr_decay when set).
    group_lrs: list[Annotated[float, Field(gt=0, le=10)]] | None = Field(default=None, min_length=1)
    weight_decay: float = Field(default=0.01, ge=0)
    # An exponential moving average of the weights (timm's ModelEmaV3, decay warm-up): each epoch
    # validates the raw and the averaged weights and offers the better as its best; record.json
    # says which (best.weights). ema_decay caps the warmed-up decay.
    ema: bool = False
    ema_decay: float = Field(default=0.999, gt=0, lt=1)
    label_smoothing: float = Field(default=0.1, ge=0, lt=1)
    clip_grad_norm: float | None = Field(default=1.0, gt=0)  # null = no clipping
    warmup_fraction: float = Field(default=0.1, ge=0, lt=1)  # of each phase's steps
    # BatchNorm on its running statistics everywhere (eval mode; thawed groups still train its
    # weights). The head was fit on features computed that way: switching thawed groups to
    # batch statistics changes them under it (docs/benchmarks.md, "Never worse"). false: thawed
    # groups' BatchNorm uses batch statistics and updates its running ones.
    freeze_bn: bool = True
    # false: depthwise convolutions keep their pretrained kernels in thawed groups (their other
    # weights and BatchNorm train). On a CPU their weight gradient is most of a step at small
    # maps: Lite0 at 64 px stepped 1.4-1.6x faster without it (docs/benchmarks.md).
    train_depthwise: bool = True
    # torch.compile (inductor) of the network each phase trains, compiled at the phase's first
    # step (5-45 s cold; a C++ compiler on a CPU): 1.13-1.26x faster steps for Lite0 with the
    # depthwise kernels kept, none with them trained (Intel Xeon, docs/benchmarks.md).
    compile: bool = False
    batch_size: int = Field(default=64, gt=1)
    # null = extract's input size; 64 trains about 4x faster than 128 px on a CPU
    image_size: int | None = Field(default=64, gt=0, le=2048)
    augment: bool = True  # random horizontal flip + small shifts, training batches only
    max_shift: int = Field(default=2, ge=0, le=64)  # pixels, at the model's input size
    # Phases with frozen groups: compute the frozen part's output once per view of each training
    # image and train the top on it (auto: where the measured times say it pays; always; never).
    # timm's recipes (training/mixing.py): Mixup / CutMix alphas (0 = off; 0.2-1.0 usual) and a
    # RandAugment config string such as rand-m9-mstd0.5 (null = off). Off unless measured to help.
    mixup_alpha: float = Field(default=0.0, ge=0, le=10)
    cutmix_alpha: float = Field(default=0.0, ge=0, le=10)
    randaugment: str | None = None
    activation_cache: Literal["auto", "always", "never"] = "auto"
    activation_views: int = Field(default=4, ge=1, le=64)  # the plain image + flipped/shifted
    activation_cache_gb: float = Field(default=4.0, gt=0)  # largest store (disk and memory)
    # auto: for images on CUDA or a CPU with native bf16, fp32 or half-precision autocast (bf16,
    # else fp16 + GradScaler on CUDA), whichever a short measurement finds faster
    # (precision_choice.py); text: bf16 where native, else fp16 on CUDA, else fp32.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    keep_checkpoints: int = Field(default=2, gt=0)
    # Processes on this machine: above 1, finetune (and scratch) run under torchrun with
    # DistributedDataParallel; batch_size stays the global batch, split between them.
    nproc: int = Field(default=1, ge=1, le=1024)
    resume: bool = True  # continue from the newest complete checkpoint in paths.finetune
    patience: int = Field(default=0, ge=0)  # epochs without val improvement (last phase); 0 = off
    # Never worse: a phase ending more than this (and more than two standard errors) below the
    # best val accuracy so far, epoch 0 (the starting model) included, goes back to the best
    # weights; if it never beat its start it is retried once at retry_lr_factor x its LR (null:
    # the thaw stops instead). A diverging loss is retried the same way.
    rollback_tolerance: float = Field(default=0.01, ge=0, le=1)
    retry_lr_factor: float | None = Field(default=0.1, gt=0, lt=1)
    deterministic: bool = False  # deterministic kernels: resume gives bit-identical results
    # auto: a linear probe at or above this val accuracy leaves too little for a fine-tune to win.
    auto_probe_good: float = Field(default=0.99, gt=0, le=1)

    @field_validator("randaugment")
    @classmethod
    def _randaugment_config(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(RANDAUGMENT, value):
            raise ValueError(
                f"finetune.randaugment: '{value}' is not a timm RandAugment config; write rand "
                "and -<op><number> parts, e.g. rand-m9-mstd0.5 (magnitude 9, its noise 0.5)"
            )
        return value

    @model_validator(mode="after")
    def _check_phases(self) -> FinetuneParams:
        if self.strategy == "custom" and not self.phases:
            raise ValueError(
                "finetune.phases: strategy 'custom' needs a non-empty list of "
                "{groups, epochs, lr}, e.g. [{groups: 0, epochs: 1, lr: 0.001}]"
            )
        if self.batch_size % self.nproc:
            raise ValueError(
                f"finetune.batch_size: {self.batch_size} is the global batch, split between "
                f"finetune.nproc={self.nproc} processes; make it a multiple of {self.nproc}"
            )
        auto = self.base_lr == "auto" or any(p.lr == "auto" for p in self.phases)
        if auto and self.group_lrs is not None:
            raise ValueError(
                "finetune.group_lrs: absolute LRs per group leave nothing for lr: auto to find; "
                "remove group_lrs (lr_decay sets the groups' ratios) or give the LRs as numbers"
            )
        if self.strategy != "custom" and self.phases:
            raise ValueError(
                f"finetune.phases: used only with strategy 'custom', not '{self.strategy}'; "
                "set finetune.strategy: custom or remove finetune.phases"
            )
        return self


class ScratchParams(Section):
    """The from-scratch baseline (``scratch`` stage): the backbone's architecture with random
    weights, trained like ``finetune`` (same image size, batch, augmentation, epochs) so time
    and accuracy compare. It is a baseline: evaluated and reported, never registered."""

    # Off by default: it costs as much as the fine-tune (half the default run's time); `make
    # scratch` turns it on and reruns scratch onward; the report and summary add its row.
    enabled: bool = False
    lr: float = Field(default=1e-3, gt=0, le=10)  # one LR for every group (nothing to preserve)
    epochs: int | None = Field(default=None, gt=0)  # null: the fine-tune's epochs (same budget)
