"""The LR range test (Smith, 2017) with fastai's recipe and suggestion rules (``Learner.lr_find``).

The LR grows exponentially from ``start`` to ``end`` over ``steps`` optimizer steps; the loss is
recorded as fastai records it, an exponential moving average (beta 0.98) corrected for its start;
the sweep stops early when the loss is NaN/inf or more than 4x its minimum. Suggestions follow
fastai 2.8's ``valley`` (the middle of the longest descending run, fastai's default) and
``steep`` (where the loss falls fastest against log LR), both on the curve without its first
tenth and last five points, as fastai trims it. A sweep too short to read (it diverged almost at
once) suggests its own start times ten, never NaN.

The head's sweep runs on the cached features, so it takes seconds (``thawline lr-find``,
``head.lr: auto``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from thawline.config import HeadParams

if TYPE_CHECKING:  # torch costs about a second: `thawline lr-find --help` never needs it
    import torch

START, END, STEPS, BETA, STOP_DIV = 1e-7, 10.0, 100, 0.98, 4.0
MIN_POINTS = 8  # a trimmed curve shorter than this says nothing


@dataclass(frozen=True)
class LRFinding:
    """A sweep's curve and what it suggests."""

    lrs: list[float]
    losses: list[float]  # smoothed, one per step taken
    valley: float  # fastai's default suggestion: what ``lr: auto`` uses
    steep: float
    stopped: str  # why the sweep ended

    def as_dict(self) -> dict:
        return asdict(self)


def lr_sweep(
    step: Callable[[float], float],
    start: float = START,
    end: float = END,
    steps: int = STEPS,
) -> tuple[list[float], list[float], str]:
    """Call ``step(lr)`` (one optimizer step at ``lr``, returning its loss) along the schedule.

    Returns:
        ``(lrs, smoothed losses, why it stopped)``; a NaN/inf loss is never recorded.
    """
    lrs, losses, average, best = [], [], 0.0, math.inf
    for i in range(steps):
        lr = start * (end / start) ** (i / steps)  # fastai's SchedExp: position i / num_it
        loss = step(lr)
        if not math.isfinite(loss):
            return lrs, losses, f"the loss became {loss} at lr {lr:.3g}"
        average = BETA * average + (1 - BETA) * loss
        smoothed = average / (1 - BETA ** (i + 1))
        lrs.append(lr)
        losses.append(smoothed)
        best = min(best, smoothed)
        if smoothed > STOP_DIV * best:
            return lrs, losses, f"the loss passed {STOP_DIV:g}x its minimum at lr {lr:.3g}"
    return lrs, losses, f"reached lr {end:g}"


def valley(lrs: list[float], losses: list[float]) -> float:
    """fastai's ``valley`` (from ESRI): the LR about half way into the longest run of falling
    loss (a third of it plus a sixth, as fastai indexes it)."""
    n = len(losses)
    longest = [1] * n
    start, end = 0, 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and longest[i] < longest[j] + 1:
                longest[i] = longest[j] + 1
            if longest[end] < longest[i]:
                end, start = i, i - longest[i]
    sections = (end - start) / 3
    return lrs[start + int(sections) + int(sections / 2)]


def steep(lrs: list[float], losses: list[float]) -> float:
    """fastai's ``steep``: the LR where the loss falls fastest against log LR."""
    slopes = [
        (losses[i + 1] - losses[i]) / (math.log(lrs[i + 1]) - math.log(lrs[i]))
        for i in range(len(losses) - 1)
    ]
    return lrs[min(range(len(slopes)), key=slopes.__getitem__)]


def suggest(lrs: list[float], losses: list[float], stopped: str, start: float) -> LRFinding:
    """The suggestions on fastai's trimmed curve (or ``start`` x 10 when there is too little)."""
    trim = slice(len(losses) // 10, len(losses) - 5)
    kept_lrs, kept = lrs[trim], losses[trim]
    if len(kept) < MIN_POINTS:
        fallback = start * 10
        return LRFinding(lrs, losses, fallback, fallback, f"{stopped}; too short to read")
    return LRFinding(lrs, losses, valley(kept_lrs, kept), steep(kept_lrs, kept), stopped)


def find_head_lr(
    train: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    opts: HeadParams,
    seed: int,
    start: float = START,
    end: float = END,
    steps: int = STEPS,
) -> LRFinding:
    """The range test for a fresh head of ``opts`` on cached features (AdamW with the head's
    weight decay, its batch size and loss), as ``train_head`` would train it.

    Args:
        train: ``(features [N, D], labels [N])``.
        num_classes: Output width.
        opts: The ``head`` params section (its ``lr`` is not used).
        seed: Fixes the head's init and the batches.
    """
    import torch
    from torch import nn

    from thawline.models.head import Head
    from thawline.training.fit_head import class_weights, head_batch_size

    torch.manual_seed(seed)
    x, y = train[0].float(), train[1].long()
    head = Head(x.shape[1], num_classes, opts.type, opts.hidden, opts.dropout)
    head.set_standardisation(x)
    x = (x - head.mean) / head.std
    weights = class_weights(y, num_classes) if opts.class_weights == "balanced" else None
    loss_fn = nn.CrossEntropyLoss(weight=weights, label_smoothing=opts.label_smoothing)
    net = head.net.train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=start, weight_decay=opts.weight_decay)
    batch = head_batch_size(opts, len(x))
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=generator)
    position = 0

    def step(lr: float) -> float:
        nonlocal order, position
        if position + batch > len(x):  # a new epoch: reshuffle
            order, position = torch.randperm(len(x), generator=generator), 0
        idx = order[position : position + batch]
        position += batch
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = loss_fn(net(x[idx]), y[idx])
        value = loss.item()
        if not math.isfinite(value):
            return value
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return value

    lrs, losses, stopped = lr_sweep(step, start, end, steps)
    return suggest(lrs, losses, stopped, start)
