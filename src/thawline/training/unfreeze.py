"""Gradual unfreezing with discriminative learning rates, as small pure helpers.

The backbone's ordered layer groups (stem first, top last) plus the head make ``n + 1`` optimizer
param groups, all created up front: a resumed run or a scheduler never meets a group that appears
mid-run. A phase unfreezes the top ``k`` groups; frozen groups get ``requires_grad=False`` (no
gradient, so AdamW skips them) and an LR of 0 (so not even weight decay could move them), and
their BatchNorm layers stay in eval mode so their running statistics do not drift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from thawline.config import Finetune
from thawline.models.classifier import Classifier
from thawline.training.schedule import warmup_cosine


@dataclass(frozen=True)
class Phase:
    """A resolved phase: ``groups`` unfrozen from the top (0..n), its epochs and head LR."""

    groups: int
    epochs: int
    lr: float


def resolve_phases(opts: Finetune, num_groups: int) -> list[Phase]:
    """The phase list for a strategy, with ``-1`` resolved to ``num_groups``.

    Raises:
        ValueError: A custom phase asks for more groups than the backbone has.
    """
    epochs, lr = opts.epochs_per_phase, opts.base_lr
    if opts.strategy == "auto":
        raise ValueError(
            "finetune.strategy: 'auto' is resolved to a preset by choose_strategy before training"
        )
    if opts.strategy == "head_only":
        return [Phase(0, epochs, lr)]
    if opts.strategy == "full":
        return [Phase(num_groups, epochs, lr)]
    if opts.strategy == "gradual":
        steps = min(opts.gradual_steps or num_groups, num_groups)
        counts = [math.ceil(step * num_groups / steps) for step in range(steps + 1)]
        return [Phase(k, epochs, lr) for k in counts]
    phases = []
    for i, phase in enumerate(opts.phases):
        if phase.groups > num_groups:
            raise ValueError(
                f"finetune.phases[{i}].groups: {phase.groups}, but the backbone has only "
                f"{num_groups} layer groups; use -1 for all"
            )
        groups = num_groups if phase.groups == -1 else phase.groups
        phases.append(Phase(groups, phase.epochs, phase.lr))
    return phases


def group_lrs(opts: Finetune, phase: Phase, num_groups: int) -> list[float]:
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


def param_groups(model: Classifier, weight_decay: float) -> list[dict]:
    """One optimizer param group per backbone layer group, stem first, plus one for the head.

    Every group starts with ``lr=1.0``, so the scheduler's multiplier is the absolute LR. The
    backbone's ImageNet classifier is in no layer group and no param group: it never runs.
    """
    named = dict(model.features.backbone.model.named_parameters())
    groups = [[named[name] for name in names] for names in layer_names(model)]
    groups.append(list(model.head.parameters()))
    return [{"params": g, "lr": 1.0, "weight_decay": weight_decay} for g in groups]


def layer_names(model: Classifier) -> list[list[str]]:
    """The backbone's layer groups (parameter names of ``backbone.model``), stem first."""
    return model.features.backbone.layer_groups()


def apply_phase(model: Classifier, phase: Phase, *, freeze_bn: bool = False) -> None:
    """Make the top ``phase.groups`` layer groups and the head trainable; freeze the rest.

    Call after ``model.train()``: BatchNorm of frozen groups (all of them with ``freeze_bn``)
    goes back to eval mode, so its running statistics stay as they are.
    """
    backbone = model.features.backbone.model
    names = layer_names(model)
    trainable = {n for g in names[len(names) - phase.groups :] for n in g}
    for name, param in backbone.named_parameters():
        param.requires_grad_(name in trainable)
    model.head.requires_grad_(True)
    for module_name, module in backbone.named_modules():
        if not isinstance(module, nn.modules.batchnorm._BatchNorm):
            continue
        own = [f"{module_name}.{n}" for n, _ in module.named_parameters(recurse=False)]
        frozen = not own or not all(n in trainable for n in own)
        if freeze_bn or frozen:
            module.eval()


def unfrozen_groups(model: Classifier) -> list[int]:
    """Indices (stem = 0) of the layer groups whose parameters currently require grad."""
    named = dict(model.features.backbone.model.named_parameters())
    return [
        i for i, g in enumerate(layer_names(model)) if g and all(named[n].requires_grad for n in g)
    ]


def release(model: Classifier) -> None:
    """Every parameter trainable again (the state a saved model is loaded in)."""
    for param in model.parameters():
        param.requires_grad_(True)


def bn_running_stats(module: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every BatchNorm's running mean/var (for checks that frozen BN did not move)."""
    return {
        name: buf.detach().clone()
        for name, buf in module.named_buffers()
        if name.endswith(("running_mean", "running_var"))
    }


def phase_of(epoch: int, phases: list[Phase]) -> int:
    """The index of the phase that 0-based ``epoch`` belongs to (the last one past the end)."""
    end = 0
    for index, phase in enumerate(phases):
        end += phase.epochs
        if epoch < end:
            return index
    return len(phases) - 1


def phase_schedule(
    optimizer: torch.optim.Optimizer,
    phases: list[Phase],
    lrs: list[list[float]],
    steps_per_epoch: int,
    warmup_fraction: float,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up + cosine within each phase, per param group, over the whole run.

    ``lrs[phase][group]`` is each group's peak LR (0 while frozen). The optimizer's groups start
    at ``lr=1.0``, so each lambda returns the absolute LR. The lambdas are plain closures, which
    ``LambdaLR.state_dict`` leaves out: the scheduler's state is only its step count.
    """
    starts = [0]
    for phase in phases:
        starts.append(starts[-1] + phase.epochs * steps_per_epoch)

    def lr_at(step: int, group: int) -> float:
        index = phase_of(step // steps_per_epoch, phases)
        local = min(step - starts[index], starts[index + 1] - starts[index] - 1)
        total = starts[index + 1] - starts[index]
        return lrs[index][group] * warmup_cosine(local, total, warmup_fraction)

    lambdas = [(lambda step, g=g: lr_at(step, g)) for g in range(len(optimizer.param_groups))]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
