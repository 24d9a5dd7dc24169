"""The training state of one fine-tune run and its epoch loop (training/thaw_loop.py runs it).

:class:`ThawTrainer` owns the model, the optimizer, the schedule over the phases and the
history; its mixins each add one concern and read that state (their docstrings say which).
Each epoch trains the phase's unfrozen groups, live or on the frozen part's cached output,
validates the raw (and averaged) weights, writes a checkpoint and judges the phase.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DistributedSampler

from thawline.config import FinetuneParams
from thawline.devices import Precision
from thawline.distributed import World
from thawline.files import tensors_sha256
from thawline.models.classifier import Classifier
from thawline.models.lora import merge_lora
from thawline.models.preprocess import item_unit
from thawline.progress import progress_bar
from thawline.stopping import deferred, interrupted
from thawline.training.cached_phases import ActivationCaching, PhaseSource
from thawline.training.compiled import CompiledNetworks
from thawline.training.ema import WeightAverage
from thawline.training.fit_head import EpochCallback, NonFiniteLossError
from thawline.training.guarded_step import GuardedStep
from thawline.training.mixing import TrainingBatches
from thawline.training.never_worse import NeverWorse
from thawline.training.phase_lr import AutoLR
from thawline.training.phases import (
    Timeline,
    group_lrs,
    resolve_phases,
    steps_per_epoch,
    timeline_schedule,
)
from thawline.training.replicas import PhaseWrapper, check_replicas
from thawline.training.resumable import Resumable
from thawline.training.stoppable import Stoppable
from thawline.training.unfreeze import apply_phase, layer_names, param_groups, release
from thawline.training.validate import logit_sums, metrics_from_sums, predict_logits


class ThawTrainer(Resumable, WeightAverage, NeverWorse, AutoLR, ActivationCaching, TrainingBatches,
               GuardedStep, Stoppable, CompiledNetworks):  # fmt: skip
    """The training state of one run (checkpoints: :class:`Resumable`; the best epoch and
    rollbacks: :class:`NeverWorse`; ``lr: auto`` phases: :class:`AutoLR`; ``ema``:
    :class:`WeightAverage`; phases on cached activations: :class:`ActivationCaching`; Mixup and
    RandAugment: :class:`TrainingBatches`; the NaN guard: :class:`GuardedStep`; stopping when
    asked: :class:`Stoppable`; ``compile``: :class:`CompiledNetworks`)."""

    def __init__(
        self, model, train, val, opts: FinetuneParams, seed, device, precision: Precision,
        world: World,
    ):  # fmt: skip
        torch.manual_seed(seed + world.rank)  # dropout differs between ranks, as data does
        self.model = model.to(device, memory_format=torch.channels_last)
        self.train, self.val, self.opts, self.seed = train, val, opts, seed
        self.device, self.precision, self.world = device, precision, world
        groups = len(layer_names(model))
        phases = resolve_phases(opts, groups, len(train[1]))
        lrs = [group_lrs(opts, phase, groups) for phase in phases]
        self.rank_batch = opts.batch_size // world.size
        self.sampler = DistributedSampler(
            range(len(train[1])), num_replicas=world.size, rank=world.rank, shuffle=True,
            seed=seed, drop_last=True,
        )  # fmt: skip
        self.steps = steps_per_epoch(len(self.sampler), self.rank_batch)
        self.wrapper = PhaseWrapper(self.model, world, device)
        # torch's fused AdamW (one kernel for every tensor): on the Intel Xeon a step of all of
        # Lite0 took 4.5 ms against the default's 12.7, of a cached phase's top 2.6 against 7.8
        fused = True if device.type in ("cpu", "cuda") else None
        self.optimizer = torch.optim.AdamW(param_groups(model, opts.weight_decay), fused=fused)
        self.timeline = Timeline(phases, lrs, self.steps, opts.warmup_fraction)
        self.scheduler = timeline_schedule(self.optimizer, self.timeline)
        self.scaler = torch.amp.GradScaler(device.type) if precision.scaler else None
        self._start_ema()
        self._start_batches()
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=opts.label_smoothing)
        self.epoch, self.seconds, self.finished = 0, 0.0, False
        # Where a stopped epoch resumes: steps done, their summed loss, the augmentation draws.
        self.step, self.partial_loss, self.epoch_generator = 0, 0.0, None
        self.history: list[dict[str, float]] = []
        self.rollbacks: list[dict] = []
        self.lr_finds: list[dict] = []  # lr: auto phases' range tests (curves included)
        self.activation_plans: dict[str, dict] = {}  # run -> cached activations or live, why
        self.best_epoch, self.best = 0, {}
        self.best_state: dict[str, torch.Tensor] | None = None
        state = model.state_dict()
        data = {"train_inputs": train[0], "train_labels": train[1]}
        if val is not None:
            data |= {"val_inputs": val[0], "val_labels": val[1]}
        self.start_digest = tensors_sha256([*sorted(state.items()), *data.items()])

    def fit(self, folder: Path, on_epoch_end: EpochCallback | None, progress: bool,
            label: str = "finetune") -> None:  # fmt: skip
        report = on_epoch_end or (lambda epoch, metrics: None)
        if not self.history and self.val is not None:
            self._epoch_zero()
            report(0, _without_epoch(self.history[0]))
        size = self.steps * self._batch()
        done = self.epoch * size + self.step * self._batch()  # a stopped epoch counts its steps
        bar = progress_bar(
            total=self.timeline.epochs * size, initial=done, desc=label,
            unit=item_unit(self.model.preprocess), unit_scale=True, disable=not progress,
        )  # fmt: skip
        self.folder, self.label = folder, label
        with bar, deferred():
            while self.epoch < self.timeline.epochs and not self.finished:
                try:
                    metrics = self._epoch(bar)
                except NonFiniteLossError as err:
                    self._retry_diverged(err)  # or raise it again: nothing to go back to
                    continue
                self._checkpoint(folder, metrics)
                report(self.epoch, _without_epoch(metrics))
                bar.total = self.timeline.epochs * size  # a retry adds epochs, a stop drops some
                if self._stop_agreed():
                    raise interrupted(self._resume_hint(f"epoch {self.epoch}"))

    def _batch(self) -> int:
        """Images per step, over all processes."""
        return min(self.rank_batch, len(self.sampler)) * self.world.size

    def _epoch(self, bar) -> dict[str, float]:
        index = self.timeline.run_of(self.epoch)
        run = self.timeline.runs[index]
        if self.timeline.pending(run.phase):
            self._find_lr(run.phase)
        lrs = self.timeline.peak_lrs(self.epoch)
        prepared = time.perf_counter()  # a cached phase's store is built (or loaded) first
        source = self._phase_source(index, run.phase)
        started, resumed_at = time.perf_counter(), self.step
        train_loss = self._train_epoch(run.phase, bar, source)
        train_seconds = time.perf_counter() - started
        metrics = {
            "epoch": self.epoch + 1,
            "phase": run.phase + 1,
            "unfrozen_groups": self.timeline.phases[run.phase].groups,
            "train_loss": train_loss,
            "lr_head": lrs[-1],  # the run's peak LRs, head and top group
            "lr_top": lrs[-2],
            "lr_scale": run.lr_scale,  # below 1 in a retry after a rollback
            "images_per_second": (self.steps - resumed_at) * self._batch() / train_seconds,
        }
        if self.timeline.phases[run.phase].image_size:  # progressive resizing
            metrics["image_size"] = self._phase_preprocess(run.phase).size
        if self.val is not None:
            metrics |= self._validate() | self._validate_ema()
        self.seconds += time.perf_counter() - prepared
        self.epoch += 1
        self.history.append(metrics)
        self._track_best(metrics, index)
        if self.val is not None and self.timeline.ends_run(self.epoch):
            self._judge_run(index, metrics)
        return metrics

    def _train_epoch(self, phase: int, bar, source: PhaseSource | None) -> float:
        self.model.train()
        apply_phase(self.model, self.timeline.phase(self.epoch), freeze_bn=self.opts.freeze_bn,
                    train_depthwise=self.opts.train_depthwise)  # fmt: skip
        net, views = self.wrapper.network(phase), None
        preprocess = self._phase_preprocess(phase)  # its own input size when progressive
        if source is not None:  # the frozen part's output, computed once: only the top trains
            net, views = source.top, self._view_draws()
        net = self._trained_form(net)  # compiled with finetune.compile
        # Order and augmentation depend on (seed, epoch, rank) only: a resumed epoch repeats them.
        self.sampler.set_epoch(self.epoch)
        order = torch.tensor(list(self.sampler))
        mixed = np.random.SeedSequence([self.seed, self.epoch, self.world.rank])
        generator = torch.Generator().manual_seed(int(mixed.generate_state(1)[0]))
        if self.step:  # resuming a stopped epoch: its order is the same, its draws go on
            generator.set_state(self.epoch_generator)
        batch, total, first = self.rank_batch, self.partial_loss, self.step
        for step in range(first, self.steps):
            idx = order[step * batch : (step + 1) * batch]
            x, y = self._training_batch(idx, source, views, generator, preprocess)
            total += self._step(net, x, y, step)
            bar.update(len(idx) * self.world.size)
            mean = total / (step + 1)
            bar.set_postfix(phase=f"{phase + 1}/{len(self.timeline.phases)}", loss=f"{mean:.4f}")
            if step + 1 < self.steps and self._stop_agreed():
                self._stop_mid_epoch(step + 1, total, generator)
        self.step, self.partial_loss = 0, 0.0
        self.world.broadcast_buffers(self.model)  # one set of BatchNorm statistics to validate
        return total / self.steps

    @property
    def val_batch_size(self) -> int:
        return 2 * self.rank_batch

    def _validate(self, model: nn.Module | None = None) -> dict[str, float]:
        """Validation loss and accuracy of ``model`` (the one training, by default); each rank
        scores every ``world.size``-th image. In a cached phase the frozen part's output for
        the validation images is computed once, and each epoch runs only the top on it."""
        model = self.model if model is None else model
        images, labels = self.val
        part = slice(self.world.rank, None, self.world.size)
        logits = self._cached_val_logits(model)
        if logits is None:
            logits = predict_logits(model, images[part], batch_size=self.val_batch_size,
                                    precision=self.precision)  # fmt: skip
        sums = logit_sums(logits, labels[part], self.opts.label_smoothing,
                          next(model.parameters()).device)  # fmt: skip
        return metrics_from_sums(self.world.all_sum(sums))

    def finish(self) -> Classifier:
        """The model with its best epoch's weights (adapters merged), on the CPU, in eval mode."""
        check_replicas(self.model, self.world)
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        release(self.model)
        model = self.model.to("cpu").eval()
        merge_lora(model)  # adapters folded into the weights: a plain model from here on
        return model


def _without_epoch(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k != "epoch"}
