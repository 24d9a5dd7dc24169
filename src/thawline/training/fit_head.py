"""Fitting a head on cached features: AdamW, one-cycle LR, label smoothing, early stopping.

The loop only ever sees feature tensors, so an epoch over 54,000 Fashion-MNIST images takes well
under a second on a CPU. It reports each epoch through ``on_epoch_end`` and never logs.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from thawline.config import HeadParams
from thawline.errors import NonFiniteLossError
from thawline.models.head import Head
from thawline.progress import progress_bar
from thawline.training.schedule import warmup_cosine
from thawline.training.validate import improved

EpochCallback = Callable[[int, dict[str, float]], None]


# A batch's mean cross-entropy above this many times that of a uniform guess (ln C) is divergence:
# a working run never gets there, while an absurd LR (1e6) reaches 1e9 in one step and would stay
# finite for an epoch or more, moving weights to inf before any check at the epoch's end.
DIVERGENCE_FACTOR = 100


def loss_problem(loss: torch.Tensor, num_classes: int) -> str | None:
    """Why this loss means the run is broken (NaN, inf, diverged), or None when it is fine."""
    if not torch.isfinite(loss):
        return f"loss became {loss.item()}"
    limit = DIVERGENCE_FACTOR * math.log(max(num_classes, 2))
    if loss.item() > limit:
        guess = f"{DIVERGENCE_FACTOR}x a uniform guess"
        return f"loss diverged to {loss.item():.3g} (> {limit:.0f}, {guess})"
    return None


@dataclass
class HeadFit:
    head: Head
    history: list[dict[str, float]]
    best_epoch: int
    best: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def fit_head(
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor] | None,
    num_classes: int,
    opts: HeadParams,
    seed: int,
    *,
    on_epoch_end: EpochCallback | None = None,
    progress: bool = False,
) -> HeadFit:
    """Train a head on features and keep the epoch with the best validation accuracy.

    Args:
        train: ``(features [N, D], labels [N])``.
        val: Validation features and labels, or None (then no early stopping; last epoch kept).
        num_classes: Output width.
        opts: The ``head`` params section.
        seed: Fixes init, dropout and shuffling: the same seed gives the same head.
        on_epoch_end: Called with ``(epoch, metrics)`` after every epoch.
        progress: Show a progress bar.

    Raises:
        NonFiniteLossError: The loss became NaN/inf (e.g. an absurd learning rate).
    """
    torch.manual_seed(seed)
    run = _HeadRun(train, num_classes, opts, seed)
    started = time.perf_counter()
    bar = progress_bar(
        range(1, opts.epochs + 1), desc="train_head", unit="epoch", disable=not progress
    )
    with _threads(1 if opts.type == "linear" else torch.get_num_threads()):
        for epoch in bar:
            metrics = run.epoch(epoch, val)
            if on_epoch_end is not None:
                on_epoch_end(epoch, {k: v for k, v in metrics.items() if k != "epoch"})
            bar.set_postfix({k: f"{v:.4f}" for k, v in metrics.items() if k != "epoch"})
            if run.should_stop(epoch, has_val=val is not None):
                break
    run.head.load_state_dict(run.best_state)
    seconds = time.perf_counter() - started
    return HeadFit(run.head.eval(), run.history, run.best_epoch, run.best, seconds)


def head_batch_size(opts: HeadParams, rows: int) -> int:
    """``head.batch_size``; ``auto`` is about 16 steps an epoch: ``rows / 16`` rounded down to a
    power of two, from 32 to 512 (512 from 8,192 rows up). With a fixed 512, 1,000 images get 2
    steps an epoch, 60 in 30 epochs: a probe far from converged."""
    if opts.batch_size != "auto":
        return opts.batch_size
    return min(512, max(32, 2 ** int(math.log2(max(rows // 16, 1)))))


class _HeadRun:
    """The state of one head fit: data, head, optimiser, schedule and the best epoch so far."""

    def __init__(self, train, num_classes: int, opts: HeadParams, seed: int):
        x, self.y = train[0].float(), train[1].long()
        self.opts = opts
        self.batch_size = head_batch_size(opts, len(x))
        self.head = Head(x.shape[1], num_classes, opts.type, opts.hidden, opts.dropout)
        self.head.set_standardisation(x)
        # Standardise once, not every step; the head keeps the statistics for inference.
        self.x = (x - self.head.mean) / self.head.std
        weights = class_weights(self.y, num_classes) if opts.class_weights == "balanced" else None
        self.loss_fn = nn.CrossEntropyLoss(weight=weights, label_smoothing=opts.label_smoothing)
        net = self.head.net
        self.optimizer = torch.optim.AdamW(
            net.parameters(), lr=opts.lr, weight_decay=opts.weight_decay
        )
        total = opts.epochs * math.ceil(len(x) / self.batch_size)
        cosine = opts.schedule == "cosine"
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: warmup_cosine(step, total) if cosine else 1.0
        )
        self.generator = torch.Generator().manual_seed(seed)
        self.history: list[dict[str, float]] = []
        self.best_state = copy.deepcopy(self.head.state_dict())
        self.best_epoch, self.best = 0, {}

    def epoch(self, epoch: int, val) -> dict[str, float]:
        """Train one epoch, validate, remember the best; returns the epoch's metrics."""
        train_loss = self._train_epoch()
        metrics = {"epoch": epoch, "train_loss": train_loss, "lr": self.schedule.get_last_lr()[0]}
        if val is not None:
            metrics |= evaluate_head(self.head, val[0], val[1], self.loss_fn)
        self.history.append(metrics)
        if improved(metrics, self.best):
            self.best_state = copy.deepcopy(self.head.state_dict())
            self.best_epoch, self.best = epoch, metrics
        return metrics

    def _train_epoch(self) -> float:
        net = self.head.net.train()
        order = torch.randperm(len(self.x), generator=self.generator)
        total = 0.0
        for start in range(0, len(self.x), self.batch_size):
            idx = order[start : start + self.batch_size]
            logits = net(self.x[idx])
            loss = self.loss_fn(logits, self.y[idx])
            if problem := loss_problem(loss, logits.shape[1]):
                raise NonFiniteLossError(
                    f"train_head: {problem} at step {start // self.batch_size}; "
                    f"lower head.lr (now {self.opts.lr}) and check the cached features"
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.schedule.step()
            total += loss.item() * len(idx)
        return total / len(self.x)

    def should_stop(self, epoch: int, has_val: bool) -> bool:
        patience = self.opts.patience
        return bool(patience) and has_val and epoch - self.best_epoch >= patience


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """A linear head's matmuls are tiny: with 2+ threads, synchronisation costs more than the
    math (measured 4x slower per epoch on a busy 2-core machine), so they run on one."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
def evaluate_head(
    head: Head, features: torch.Tensor, labels: torch.Tensor, loss_fn: nn.Module | None = None
) -> dict[str, float]:
    """Validation loss and accuracy of a head on features."""
    head.eval()
    logits = torch.cat([head(chunk) for chunk in features.split(8192)])
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    return {
        "val_loss": float(loss_fn(logits, labels.long())),
        "val_accuracy": float((logits.argmax(1) == labels).float().mean()),
    }


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights (sklearn's 'balanced'), so rare classes count as much."""
    counts = torch.bincount(labels, minlength=num_classes).float().clamp(min=1)
    return len(labels) / (num_classes * counts)
