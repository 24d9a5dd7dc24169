"""Fine-tuning backbone and head together: gradual unfreezing, exact resume, a NaN guard.

``fine_tune`` sets a run up (device, precision, adapters, its checkpoint series) and hands it
to :class:`~thawline.training.thaw_trainer.ThawTrainer`, which holds the state and the epochs.

The loop reads uint8 images and makes each batch on the fly (resize, flip + shift, normalise),
runs at the precision ``precision: auto`` measured fastest on this machine
(precision_choice.py), clips gradients, and writes a checkpoint after every epoch. It reports
through ``on_epoch_end`` and never logs to a tracker. Under torchrun (a
:class:`~thawline.distributed.World` of several processes) the model is wrapped in
DistributedDataParallel and a DistributedSampler deals each epoch's shuffled order to the ranks;
``batch_size`` stays the global batch, so the steps, the schedule and the averaged gradient are
those of one process. The wrapper is rebuilt per phase (training/replicas.py says why). Only
rank 0 writes checkpoints and calls ``on_epoch_end``. The run never ends worse than its start
(training/never_worse.py). A phase with ``lr: auto`` starts with an LR range test
(training/phase_lr.py); ``ema`` averages the weights and offers the better (training/ema.py);
``compile`` trains each phase's network compiled by torch.compile (training/compiled.py).
Asked to stop (SIGTERM, SIGINT: thawline.stopping), it finishes the current step, writes a
mid-epoch checkpoint that resumes exactly, and raises ``Interrupted``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from thawline.config import ConfigError, FinetuneParams
from thawline.devices import resolve_device
from thawline.distributed import World
from thawline.models.classifier import Classifier
from thawline.precision_choice import agreed_precision
from thawline.training.batches import deterministic
from thawline.training.compiled import check_compiler
from thawline.training.fit_head import EpochCallback
from thawline.training.resumable import remove_other_series
from thawline.training.thaw_trainer import ThawTrainer
from thawline.training.unfreeze import add_adapters, set_attention_dropout

log = logging.getLogger(__name__)
Data = tuple[torch.Tensor, torch.Tensor]  # uint8 images [N, 3, S, S], int64 labels [N]
SINGLE = World()  # one process: every collective is a no-op


@dataclass
class FineTuneResult:
    model: Classifier  # with the best epoch's weights, on the CPU, in eval mode
    history: list[dict[str, float]]
    best_epoch: int
    best: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0  # training + validation time, summed over resumed runs
    resumed_from: int = 0  # the epoch of the checkpoint this run continued from (0 = none)
    checkpoints: Path | None = None  # this run's checkpoint series
    precision: str = "fp32"
    epochs: int = 0  # epochs trained (the history's epoch 0 is the starting model, untrained)
    rollbacks: list[dict] = field(default_factory=list)  # phases rolled back, and what then
    lr_finds: list[dict] = field(default_factory=list)  # lr: auto: each phase's range test
    precision_choice: dict = field(default_factory=dict)  # how precision: auto chose (and why)
    activation_cache: list[dict] = field(default_factory=list)  # per phase run: cached or live


def fine_tune(
    model: Classifier,
    train: Data,
    val: Data | None,
    opts: FinetuneParams,
    seed: int,
    *,
    checkpoint_dir: Path | str,
    on_epoch_end: EpochCallback | None = None,
    progress: bool = False,
    world: World = SINGLE,
    label: str = "finetune",
) -> FineTuneResult:
    """Fine-tune ``model`` in the phases of ``opts``, checkpointing every epoch.

    Args:
        model: The classifier to train in place (backbone + head from ``train_head``).
        train: Training images and labels.
        val: Validation images and labels, or None (then the last epoch is kept).
        opts: The ``finetune`` params section.
        seed: Fixes shuffling, augmentation and dropout.
        checkpoint_dir: Folder of checkpoint series, one subfolder per run plan (settings,
            starting weights, data, code), so changed params start afresh and changing them
            back resumes. With ``opts.resume`` the plan's newest complete checkpoint is
            continued from, otherwise its series is cleared first. A finished run removes the
            other series.
        on_epoch_end: Called with ``(epoch, metrics)`` after each epoch's checkpoint is written.
        progress: Show a progress bar (images/s and the current phase).
        world: The torchrun processes training together (each calls this with the same
            arguments); rank 0 writes the checkpoints and calls ``on_epoch_end``.

    Returns:
        The model with its best epoch's weights, the history and timings.

    Raises:
        NonFiniteLossError: The loss, a gradient norm or a weight became NaN/inf, or the loss
            diverged where no retry was left (see never_worse); no checkpoint of that epoch.
        CheckpointError: Checkpoints of this plan exist but none is complete, or the ranks
            found different ones.
        ConfigError: ``batch_size`` is not divisible by the number of processes.
    """
    if opts.batch_size % world.size:
        raise ConfigError(
            f"finetune.batch_size: {opts.batch_size} is the global batch, split between "
            f"{world.size} processes; make it a multiple of {world.size}"
        )
    device = world.device(resolve_device(opts.device))
    if opts.compile:
        check_compiler(device)
    choice = agreed_precision(opts.precision, device, model, opts.batch_size // world.size, world)
    precision = choice.precision
    if opts.thaw == "lora":
        add_adapters(model, opts)
    backbone, dropout = model.features.backbone.model, opts.attention_dropout
    if dropout is not None and (count := set_attention_dropout(backbone, dropout)):
        log.info("%s: attention dropout %g in %d attention modules (finetune.attention_dropout)",
                 label, dropout, count)  # fmt: skip
    with deterministic(opts.deterministic):
        trainer = ThawTrainer(model, train, val, opts, seed, device, precision, world)
        series = Path(checkpoint_dir) / trainer.plan_id()
        resumed = trainer.start(series)
        trainer.fit(series, on_epoch_end if world.main else None, progress and world.main, label)
    if world.main:
        remove_other_series(series)
    return FineTuneResult(
        trainer.finish(), trainer.history, trainer.best_epoch, trainer.best, trainer.seconds,
        resumed_from=resumed, checkpoints=series, precision=precision.name,
        epochs=trainer.epoch, rollbacks=trainer.rollbacks, lr_finds=trainer.lr_finds,
        precision_choice=choice.record(),
        activation_cache=list(trainer.activation_plans.values()),
    )  # fmt: skip
