"""Fine-tuning backbone and head together: gradual unfreezing, exact resume, a NaN guard.

The loop reads uint8 images and makes each batch on the fly (resize, flip + shift, normalise),
runs in bf16 autocast where the hardware has it, clips gradients, and writes a checkpoint after
every epoch. It reports through ``on_epoch_end`` and never logs to a tracker.

Under torchrun (a :class:`~thawline.distributed.World` of several processes) the model is wrapped
in DistributedDataParallel and a DistributedSampler deals each epoch's shuffled order to the
ranks; ``batch_size`` stays the global batch, so the steps, the schedule and the averaged
gradient are those of one process. The wrapper is rebuilt whenever a phase thaws more groups:
DDP registers its all-reduce hooks on the parameters that require gradients when it is built,
so a group thawed later would train on local gradients only and the replicas would drift apart.
``find_unused_parameters`` would not fix that (it finds parameters missing from the graph, not
ones that were frozen at construction) and costs a graph walk every step; a rebuild costs one
parameter broadcast per phase. Only rank 0 writes checkpoints and calls ``on_epoch_end``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm.auto import tqdm

from thawline.config import ConfigError, Finetune
from thawline.distributed import World
from thawline.models.classifier import Classifier
from thawline.training.batches import (
    Precision,
    autocast,
    deterministic,
    resolve_device,
    resolve_precision,
    training_batch,
)
from thawline.training.checkpoint import (
    Checkpoint,
    CheckpointError,
    clear_checkpoints,
    load_latest,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from thawline.training.fit_head import EpochCallback, NonFiniteLossError, loss_problem
from thawline.training.unfreeze import (
    apply_phase,
    group_lrs,
    layer_names,
    param_groups,
    phase_of,
    phase_schedule,
    release,
    resolve_phases,
    unfrozen_groups,
)
from thawline.training.validate import improved, metrics_from_sums, validation_sums

log = logging.getLogger(__name__)
Data = tuple[torch.Tensor, torch.Tensor]  # uint8 images [N, 3, S, S], int64 labels [N]
# The code a checkpoint's training depends on: changed code starts a new checkpoint series.
CODE = [Path(__file__).parents[1] / name for name in ("training", "models")]
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


def fine_tune(
    model: Classifier,
    train: Data,
    val: Data | None,
    opts: Finetune,
    seed: int,
    *,
    checkpoint_dir: Path | str,
    on_epoch_end: EpochCallback | None = None,
    progress: bool = False,
    world: World = SINGLE,
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
        NonFiniteLossError: The loss, a gradient norm or a weight became NaN/inf; no checkpoint
            of that epoch is written.
        CheckpointError: Checkpoints of this plan exist but none is complete, or the ranks
            found different ones.
        ConfigError: ``batch_size`` is not divisible by the number of processes.
    """
    device = world.device(resolve_device(opts.device))
    precision = resolve_precision(opts.precision, device, model.preprocess.size)
    with deterministic(opts.deterministic):
        trainer = _Trainer(model, train, val, opts, seed, device, precision, world)
        series = Path(checkpoint_dir) / trainer.plan_id()
        resumed = trainer.start(series)
        trainer.fit(series, on_epoch_end if world.main else None, progress and world.main)
    if world.main:
        _remove_other_series(series)
    return trainer.result(resumed, series)


def _remove_other_series(series: Path) -> None:
    """A finished run makes other plans' checkpoints (older params, an interrupted run) moot."""
    for other in series.parent.iterdir() if series.parent.is_dir() else []:
        if other.is_dir() and other != series and not other.name.startswith("."):
            log.info("finetune: removing checkpoints of another plan: %s", other)
            shutil.rmtree(other, ignore_errors=True)


def digest(tensors: list[torch.Tensor]) -> str:
    """sha256 over the tensors' bytes (what the run starts from: weights, images, labels)."""
    h = hashlib.sha256()
    for tensor in tensors:
        h.update(str((tuple(tensor.shape), tensor.dtype)).encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def code_digest() -> str:
    """sha256 of the training and model source files."""
    h = hashlib.sha256()
    for path in sorted(p for folder in CODE for p in folder.rglob("*.py")):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def steps_per_epoch(count: int, batch_size: int) -> int:
    """Full batches only: a last batch of one image would break BatchNorm in training mode."""
    return max(1, count // batch_size)


class _Trainer:
    """The training state of one run: what a checkpoint saves and restores."""

    def __init__(
        self, model, train, val, opts: Finetune, seed, device, precision: Precision, world: World
    ):
        if opts.batch_size % world.size:
            raise ConfigError(
                f"finetune.batch_size: {opts.batch_size} is the global batch, split between "
                f"{world.size} processes; make it a multiple of {world.size}"
            )
        torch.manual_seed(seed + world.rank)  # dropout differs between ranks, as data does
        self.model = model.to(device, memory_format=torch.channels_last)
        self.train, self.val, self.opts, self.seed = train, val, opts, seed
        self.device, self.precision, self.world = device, precision, world
        groups = len(layer_names(model))
        self.phases = resolve_phases(opts, groups)
        self.lrs = [group_lrs(opts, phase, groups) for phase in self.phases]
        self.rank_batch = opts.batch_size // world.size
        self.sampler = DistributedSampler(
            range(len(train[1])), num_replicas=world.size, rank=world.rank, shuffle=True,
            seed=seed, drop_last=True,
        )  # fmt: skip
        self.steps = steps_per_epoch(len(self.sampler), self.rank_batch)
        self.wrapped: tuple[int, nn.Module] | None = None  # (phase, DDP wrapper)
        self.optimizer = torch.optim.AdamW(param_groups(model, opts.weight_decay))
        self.scheduler = phase_schedule(
            self.optimizer, self.phases, self.lrs, self.steps, opts.warmup_fraction
        )
        self.scaler = torch.amp.GradScaler(device.type) if precision.scaler else None
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=opts.label_smoothing)
        self.epochs = sum(phase.epochs for phase in self.phases)
        self.epoch, self.seconds, self.finished = 0, 0.0, False
        self.history: list[dict[str, float]] = []
        self.best_epoch, self.best = 0, {}
        self.best_state: dict[str, torch.Tensor] | None = None
        state = model.state_dict()
        data = [*train, *(val or ())]
        self.start_digest = digest([state[k] for k in sorted(state)] + list(data))

    def plan(self) -> dict:
        """What must match for a checkpoint to continue this run exactly."""
        settings = self.opts.model_dump(
            mode="json", exclude={"resume", "keep_checkpoints", "nproc"}
        )  # nproc only says how to launch; the world size below is what counts
        return {
            "settings": settings,
            "phases": [[p.groups, p.epochs, p.lr] for p in self.phases],
            "lrs": self.lrs,
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
        set_rng_state(state["rng"][self.world.rank])  # one per rank (the plan fixes the count)
        self.epoch, self.seconds = state["epoch"], state["seconds"]
        self.finished = state["finished"]
        self.history, self.best = state["history"], state["best"]
        self.best_epoch = state["best_epoch"]
        self.best_state = checkpoint.best if checkpoint.best is not None else checkpoint.model

    def fit(self, folder: Path, on_epoch_end: EpochCallback | None, progress: bool) -> None:
        size = self.steps * self._batch()
        bar = tqdm(
            total=self.epochs * size, initial=self.epoch * size, desc="finetune", unit="img",
            unit_scale=True, disable=not progress,
        )  # fmt: skip
        with bar:
            while self.epoch < self.epochs and not self.finished:
                metrics = self._epoch(bar)
                self._checkpoint(folder, metrics)
                if on_epoch_end is not None:
                    on_epoch_end(self.epoch, {k: v for k, v in metrics.items() if k != "epoch"})

    def _batch(self) -> int:
        """Images per step, over all processes."""
        return min(self.rank_batch, len(self.sampler)) * self.world.size

    def _epoch(self, bar) -> dict[str, float]:
        index = phase_of(self.epoch, self.phases)
        started = time.perf_counter()
        train_loss = self._train_epoch(index, bar)
        train_seconds = time.perf_counter() - started
        metrics = {
            "epoch": self.epoch + 1,
            "phase": index + 1,
            "unfrozen_groups": self.phases[index].groups,
            "train_loss": train_loss,
            "lr_head": self.lrs[index][-1],  # the phase's peak LRs, head and top group
            "lr_top": self.lrs[index][-2],
            "images_per_second": self.steps * self._batch() / train_seconds,
        }
        if self.val is not None:
            metrics |= self._validate()
        self.seconds += time.perf_counter() - started
        self.epoch += 1
        self.history.append(metrics)
        self._track_best(metrics, index)
        return metrics

    def _train_epoch(self, index: int, bar) -> float:
        self.model.train()
        apply_phase(self.model, self.phases[index], freeze_bn=self.opts.freeze_bn)
        net = self._network(index)
        # Order and augmentation depend on (seed, epoch, rank) only: a resumed epoch repeats them.
        self.sampler.set_epoch(self.epoch)
        order = torch.tensor(list(self.sampler))
        mixed = np.random.SeedSequence([self.seed, self.epoch, self.world.rank])
        generator = torch.Generator().manual_seed(int(mixed.generate_state(1)[0]))
        images, labels = self.train
        batch, total = self.rank_batch, 0.0
        for step in range(self.steps):
            idx = order[step * batch : (step + 1) * batch]
            x = training_batch(
                images[idx].to(self.device), self.model.preprocess, augment=self.opts.augment,
                max_shift=self.opts.max_shift, generator=generator,
            )  # fmt: skip
            total += self._step(net, x, labels[idx].to(self.device), step)
            bar.update(len(idx) * self.world.size)
            mean = total / (step + 1)
            bar.set_postfix(phase=f"{index + 1}/{len(self.phases)}", loss=f"{mean:.4f}")
        self.world.broadcast_buffers(self.model)  # one set of BatchNorm statistics to validate
        return total / self.steps

    def _network(self, index: int) -> nn.Module:
        """The model, or under torchrun its DDP wrapper for this phase's trainable parameters."""
        if not self.world.active:
            return self.model
        if self.wrapped is None or self.wrapped[0] != index:
            self.wrapped = None  # the old wrapper's hooks go with it
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.wrapped = (index, DistributedDataParallel(self.model, device_ids=ids))
        return self.wrapped[1]

    def _validate(self) -> dict[str, float]:
        """Validation loss and accuracy; each rank scores every ``world.size``-th image."""
        images, labels = self.val
        part = slice(self.world.rank, None, self.world.size)
        sums = validation_sums(
            self.model, images[part], labels[part], batch_size=2 * self.rank_batch,
            precision=self.precision, label_smoothing=self.opts.label_smoothing,
        )  # fmt: skip
        return metrics_from_sums(self.world.all_sum(sums))

    def _step(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int) -> float:
        with autocast(self.device, self.precision):
            logits = net(x).float()
            loss = self.loss_fn(logits, y)
        # The mean over ranks, so that all of them stop together on a bad loss.
        mean = self.world.all_sum(loss.detach().clone()) / self.world.size
        if problem := loss_problem(mean, logits.shape[1]):
            self._non_finite(f"{problem} at epoch {self.epoch + 1}, step {step}")
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
        return mean.item()

    def _non_finite(self, what: str) -> None:
        phase = self.phases[phase_of(min(self.epoch, self.epochs - 1), self.phases)]
        raise NonFiniteLossError(
            f"finetune: {what} (phase LR {phase.lr}); "
            "lower finetune.base_lr (or the phase's lr), keep finetune.clip_grad_norm set, "
            "or use precision fp32"
        )

    def _track_best(self, metrics: dict[str, float], index: int) -> None:
        if improved(metrics, self.best):
            self.best_epoch, self.best = self.epoch, metrics
            state = self.model.state_dict()
            self.best_state = {k: v.detach().cpu().clone() for k, v in state.items()}
        last_phase = index == len(self.phases) - 1
        # Early stopping only in the last phase: an earlier phase is followed by a thaw.
        if self.opts.patience and self.val is not None and last_phase:
            self.finished = self.epoch - self.best_epoch >= self.opts.patience

    def _checkpoint(self, folder: Path, metrics: dict[str, float]) -> None:
        state = self.model.state_dict()
        bad = [k for k, v in state.items() if v.is_floating_point() and not v.isfinite().all()]
        if bad:
            self._non_finite(f"weights became non-finite ({bad[:3]}) in epoch {self.epoch}")
        rng = self.world.gather(rng_state())  # every rank's, for an exact resume
        if not self.world.main:
            return
        save_checkpoint(
            folder, self.epoch, state, self._state(rng),
            best=None if self.best_epoch == self.epoch else self.best_state,
            keep=self.opts.keep_checkpoints,
        )  # fmt: skip

    def _state(self, rng: list[dict]) -> dict:
        return {
            "plan": self.plan(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "rng": rng,
            "epoch": self.epoch,
            "phase": phase_of(self.epoch - 1, self.phases),
            "unfrozen_groups": unfrozen_groups(self.model),
            "history": self.history,
            "best_epoch": self.best_epoch,
            "best": self.best,
            "seconds": self.seconds,
            "finished": self.finished,
        }

    def result(self, resumed: int, series: Path) -> FineTuneResult:
        self._check_replicas()
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        release(self.model)
        model = self.model.to("cpu").eval()
        return FineTuneResult(
            model, self.history, self.best_epoch, self.best, self.seconds,
            resumed_from=resumed, checkpoints=series, precision=self.precision.name,
        )  # fmt: skip

    def _check_replicas(self) -> None:
        """Under torchrun, every rank must end with the same weights; say so if they do not."""
        if not self.world.active:
            return
        state = self.model.state_dict()
        digests = self.world.gather(digest([state[k] for k in sorted(state)]))
        if len(set(digests)) > 1:
            raise RuntimeError(
                f"finetune: the {self.world.size} processes ended with different weights; "
                "a gradient was not synchronised. Please report this with your params.yaml"
            )
