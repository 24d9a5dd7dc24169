"""The phases of a fine-tune and the timeline they run on, as small pure pieces.

A *plan* is a list of phases (layer groups unfrozen from the top, epochs, head LR), resolved from
a strategy. The *timeline* is the order in which phases actually run: normally the plan, but a
phase that ends worse than the best epoch so far is rolled back, and then either runs once more
at a lower LR (a retry is inserted right after it) or the thaw stops there (the rest of the
timeline is dropped). The per-group LR schedule (warm-up + cosine within each run) is read from
the timeline, so a retry gets a schedule of its own. The timeline's runs are part of each
checkpoint: a resumed run replays the same decisions.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from thawline.config import FinetuneParams
from thawline.training.schedule import warmup_cosine


@dataclass(frozen=True)
class Phase:
    """A resolved phase: ``groups`` unfrozen from the top (0..n), its epochs and head LR.

    ``auto``: the LR is found by a range test when the phase starts; until then ``lr`` is 1, so
    the timeline's per-group LRs of the phase are the ratios that the found LR scales.
    """

    groups: int
    epochs: int
    lr: float
    auto: bool = False
    image_size: int | None = None  # progressive resizing: its input size (None: the model's)


def steps_per_epoch(count: int, batch_size: int) -> int:
    """Full batches only: a last batch of one image would break BatchNorm in training mode."""
    return max(1, count // batch_size)


def epochs_per_phase(opts: FinetuneParams, train_size: int) -> int:
    """``epochs_per_phase``, with ``auto`` resolved for ``train_size`` training images.

    ``auto`` gives each phase at least ``phase_images`` images (whole epochs): one epoch of a
    large set, several of a small one. A phase of a few optimizer steps cannot move the weights
    (1,000 images at batch 64 are 15 steps), and counting epochs alone gives a small folder
    almost no training at all.
    """
    if opts.epochs_per_phase != "auto":
        return opts.epochs_per_phase
    # Full batches only, or one batch of everything when there is less than a batch.
    per_epoch = steps_per_epoch(train_size, opts.batch_size) * min(opts.batch_size, train_size)
    return max(1, math.ceil(opts.phase_images / per_epoch))


def resolve_phases(opts: FinetuneParams, num_groups: int, train_size: int) -> list[Phase]:
    """The phase list for a strategy, with ``-1`` resolved to ``num_groups``.

    Raises:
        ValueError: A custom phase asks for more groups than the backbone has.
    """
    epochs, lr = epochs_per_phase(opts, train_size), opts.base_lr
    auto = lr == "auto"
    lr = 1.0 if auto else lr
    if opts.strategy == "auto":
        raise ValueError(
            "finetune.strategy: 'auto' is resolved to a preset by choose_strategy before training"
        )
    if opts.strategy == "head_only":
        return [Phase(0, epochs, lr, auto)]
    if opts.strategy == "full":
        return [Phase(num_groups, epochs, lr, auto)]
    if opts.strategy == "gradual":
        steps = min(opts.gradual_steps or num_groups, num_groups)
        counts = [math.ceil(step * num_groups / steps) for step in range(steps + 1)]
        return [Phase(k, epochs, lr, auto) for k in counts]
    phases = []
    for i, phase in enumerate(opts.phases):
        if phase.groups > num_groups:
            raise ValueError(
                f"finetune.phases[{i}].groups: {phase.groups}, but the backbone has only "
                f"{num_groups} layer groups; use -1 for all"
            )
        groups = num_groups if phase.groups == -1 else phase.groups
        auto = phase.lr == "auto"
        lr = 1.0 if auto else phase.lr
        phases.append(Phase(groups, phase.epochs, lr, auto, phase.image_size))
    return phases


def budget_epochs(opts: FinetuneParams, num_groups: int, train_size: int) -> int:
    """Epochs through the images in all of a strategy's phases (the scratch baseline's budget)."""
    return sum(phase.epochs for phase in resolve_phases(opts, num_groups, train_size))


def group_lrs(opts: FinetuneParams, phase: Phase, num_groups: int) -> list[float]:
    """Each param group's peak LR in ``phase``: backbone groups stem first, then the head.

    Frozen groups get 0. Unfrozen ones get ``phase.lr * lr_decay ** distance`` (distance from the
    top: the top group is 1, the head 0, as timm's layer decay), or ``group_lrs[i]`` when set.

    Raises:
        ValueError: ``group_lrs`` does not have one entry per backbone group.
    """
    if opts.group_lrs is not None and len(opts.group_lrs) != num_groups:
        raise ValueError(
            f"finetune.group_lrs: {len(opts.group_lrs)} values, but the backbone has "
            f"{num_groups} layer groups (stem first); give one LR per group or use lr_decay"
        )
    first_unfrozen = num_groups - phase.groups
    lrs = []
    for i in range(num_groups):
        if i < first_unfrozen:
            lrs.append(0.0)
        elif opts.group_lrs is not None:
            lrs.append(float(opts.group_lrs[i]))
        else:
            lrs.append(phase.lr * opts.lr_decay ** (num_groups - i))
    return [*lrs, phase.lr]


@dataclass
class Run:
    """One run of a planned phase: which phase, its LR scale, whether it is a retry, and its
    epochs when it was cut short (it diverged after ``epochs`` epochs)."""

    phase: int
    lr_scale: float = 1.0
    retry: bool = False
    epochs: int | None = None  # None: the phase's own


class Timeline:
    """The runs of a fine-tune in order, and the LR of every param group at every step."""

    def __init__(
        self, phases: list[Phase], lrs: list[list[float]], steps: int, warmup_fraction: float
    ):
        self.phases, self.lrs, self.steps, self.warmup = phases, lrs, steps, warmup_fraction
        self.runs = [Run(i) for i in range(len(phases))]
        self.planned = [
            [p.groups, p.epochs, "auto" if p.auto else p.lr, *([p.image_size] * bool(p.image_size))]
            for p in phases
        ]
        self.planned_lrs = [list(group) for group in lrs]  # of an auto phase: its ratios
        self.found: dict[int, float] = {}  # phase -> the LR its range test found

    def pending(self, phase: int) -> bool:
        """Whether ``phase`` has ``lr: auto`` and no LR found yet."""
        return self.phases[phase].auto and phase not in self.found

    def set_found(self, phase: int, lr: float) -> None:
        """Give an ``auto`` phase the LR its range test found (its groups keep their ratios)."""
        self.found[phase] = lr
        old = self.phases[phase]
        self.phases[phase] = dataclasses.replace(old, lr=lr)
        self.lrs[phase] = [ratio * lr for ratio in self.planned_lrs[phase]]

    def found_state(self) -> list[list]:
        return [[phase, lr] for phase, lr in sorted(self.found.items())]

    def load_found(self, state: list[list]) -> None:
        for phase, lr in state:
            self.set_found(int(phase), float(lr))

    def length(self, run: Run) -> int:
        """A run's epochs."""
        return self.phases[run.phase].epochs if run.epochs is None else run.epochs

    @property
    def epochs(self) -> int:
        """Epochs in all runs (changes when a run is retried or the thaw stops)."""
        return sum(self.length(run) for run in self.runs)

    def run_of(self, epoch: int) -> int:
        """The index of the run that 0-based ``epoch`` belongs to (the last one past the end)."""
        end = 0
        for index, run in enumerate(self.runs):
            end += self.length(run)
            if epoch < end:
                return index
        return len(self.runs) - 1

    def first_epoch(self, index: int) -> int:
        """The 0-based epoch at which run ``index`` starts."""
        return sum(self.length(run) for run in self.runs[:index])

    def ends_run(self, epochs_done: int) -> bool:
        """Whether the epoch that brought the count to ``epochs_done`` was a run's last."""
        index = self.run_of(epochs_done - 1)
        return epochs_done == self.first_epoch(index) + self.length(self.runs[index])

    def phase(self, epoch: int) -> Phase:
        """The phase that 0-based ``epoch`` trains in, with its run's LR scale applied."""
        run = self.runs[self.run_of(epoch)]
        phase = self.phases[run.phase]
        return Phase(phase.groups, phase.epochs, phase.lr * run.lr_scale)

    def peak_lrs(self, epoch: int) -> list[float]:
        """Every param group's peak LR in the run of ``epoch``."""
        run = self.runs[self.run_of(epoch)]
        return [lr * run.lr_scale for lr in self.lrs[run.phase]]

    def retry(self, index: int, lr_factor: float) -> None:
        """Run ``index``'s phase once more, right after it, at ``lr_factor`` times its LR."""
        run = self.runs[index]
        self.runs.insert(index + 1, Run(run.phase, run.lr_scale * lr_factor, retry=True))

    def retry_now(self, index: int, done: int, lr_factor: float) -> None:
        """Run ``index`` diverged after ``done`` of its epochs: it ends there (or goes, if it
        had none) and its retry at ``lr_factor`` times its LR starts at once."""
        run = self.runs[index]
        retry = Run(run.phase, run.lr_scale * lr_factor, retry=True)
        if done:
            self.runs[index] = Run(run.phase, run.lr_scale, run.retry, epochs=done)
            self.runs.insert(index + 1, retry)
        else:
            self.runs[index] = retry

    def stop_after(self, index: int) -> None:
        """Drop every run after ``index``: the thaw stops there."""
        del self.runs[index + 1 :]

    def lr(self, step: int, group: int) -> float:
        """The absolute LR of param ``group`` at optimizer ``step`` (warm-up + cosine per run)."""
        index = self.run_of(step // self.steps)
        run = self.runs[index]
        start = self.first_epoch(index) * self.steps
        total = self.length(run) * self.steps
        local = min(step - start, total - 1)
        return self.lrs[run.phase][group] * run.lr_scale * warmup_cosine(local, total, self.warmup)

    def state(self) -> list[list]:
        """The runs as plain lists (for a checkpoint; -1: the phase's own epochs)."""
        return [[r.phase, r.lr_scale, r.retry, r.epochs or -1] for r in self.runs]

    def load_state(self, state: list[list]) -> None:
        self.runs = [
            Run(int(p), float(s), bool(r), int(e) if e > 0 else None) for p, s, r, e in state
        ]


def timeline_schedule(
    optimizer: torch.optim.Optimizer, timeline: Timeline
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` whose per-group multipliers are the timeline's absolute LRs.

    The optimizer's groups start at ``lr=1.0``. The lambdas are plain closures over the
    timeline, which ``LambdaLR.state_dict`` leaves out: the scheduler's state is its step count,
    and the timeline's runs are saved beside it.
    """
    lambdas = [(lambda step, g=g: timeline.lr(step, g)) for g in range(len(optimizer.param_groups))]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
