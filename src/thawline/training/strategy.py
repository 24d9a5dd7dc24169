"""``finetune.strategy: auto``: how much of the backbone to train, and why, from the evidence.

The seeds' rule of thumb (under 1,000 images extract features, 1,000 to 10,000 thaw gradually,
more fine-tune everything) did not survive measurement (``bench/strategies.py``,
docs/benchmarks.md): on Fashion-MNIST folders of 200 to 10,000 training images, fine-tuning every
group with discriminative LRs beat the linear probe by 2.7 to 5.4 points of test accuracy at
every size, from 200 images up; gradual unfreezing was within noise of it up to 2,000 images in
2-3x the time, and at 10,000 won one sample and lost another by about 1.5 points.
So ``auto`` fine-tunes everything unless thawing cannot be checked or cannot pay:

- no validation split: the fine-tune's "never worse than its start" needs validation images;
- fewer than ``TOO_FEW`` training images: too few to train on, and too few to validate with;
- the probe already reaches ``auto_probe_good`` validation accuracy: too little left to win.
"""

from __future__ import annotations

from dataclasses import dataclass

from thawline.config import Config
from thawline.data.store import PreparedStore
from thawline.models.storage import read_head_meta

TOO_FEW = 100


@dataclass(frozen=True)
class StrategyChoice:
    strategy: str  # head_only | gradual | full
    reason: str


def choose_strategy(
    train_size: int, val_size: int, probe_accuracy: float | None, probe_good: float
) -> StrategyChoice:
    """The strategy for ``train_size`` training and ``val_size`` validation images and the
    probe's validation accuracy (or None)."""
    if not val_size:
        return StrategyChoice(
            "head_only",
            "no validation split: a fine-tune could not be checked against the probe it starts "
            "from; the head on cached features is the model (set prepare.val_fraction > 0)",
        )
    if train_size < TOO_FEW:
        return StrategyChoice(
            "head_only",
            f"{train_size} training images (< {TOO_FEW}): too few to fine-tune the backbone on; "
            "the head on cached features is the model",
        )
    if probe_accuracy is not None and probe_accuracy >= probe_good:
        return StrategyChoice(
            "head_only",
            f"the linear probe already reaches {probe_accuracy:.4f} val accuracy (>= "
            f"auto_probe_good {probe_good}): too little left for a fine-tune to win",
        )
    probe = "no probe accuracy" if probe_accuracy is None else f"probe {probe_accuracy:.4f}"
    return StrategyChoice(
        "full",
        f"{train_size} training images, {probe}: fine-tune every group with discriminative LRs "
        "(on 200-10,000 images it beat the probe by 2.7-5.4 points, gradual unfreezing no "
        "better in 2-3x the time; docs/benchmarks.md)",
    )


def resolve_strategy(cfg: Config) -> StrategyChoice:
    """``finetune.strategy``, with ``auto`` decided from the prepared data and the probe.

    Resolved once, by the finetune stage, which records it (``plan.json``) for the scratch
    baseline's budget.
    """
    if cfg.finetune.strategy != "auto":
        return StrategyChoice(cfg.finetune.strategy, "set in params (finetune.strategy)")
    store = PreparedStore(cfg.paths.prepared)
    probe = probe_accuracy(read_head_meta(cfg.paths.head))
    return choose_strategy(
        store.count("train"), store.count("val"), probe, cfg.finetune.auto_probe_good
    )


def probe_accuracy(head_meta: dict) -> float | None:
    """The head's validation accuracy at its best epoch, from its saved metadata."""
    best = head_meta.get("best_epoch")
    for row in head_meta.get("history") or []:
        if row.get("epoch") == best and "val_accuracy" in row:
            return float(row["val_accuracy"])
    return None


def should_escalate(policy: str, threshold: float, probe: float | None) -> StrategyChoice:
    """Whether the retrain flow fine-tunes after retraining the head (``retrain`` params).

    Returns:
        ``strategy`` "finetune" or "head_only", with the reason.
    """
    if policy == "always":
        return StrategyChoice("finetune", "retrain.finetune is 'always'")
    if policy == "never":
        return StrategyChoice("head_only", "retrain.finetune is 'never'")
    if probe is None:
        return StrategyChoice("finetune", "the head reports no validation accuracy")
    if probe < threshold:
        return StrategyChoice(
            "finetune",
            f"the retrained head reaches {probe:.4f} val accuracy, below retrain.escalate_below "
            f"{threshold}: fine-tune",
        )
    return StrategyChoice(
        "head_only",
        f"the retrained head reaches {probe:.4f} val accuracy (>= retrain.escalate_below "
        f"{threshold}): the head is enough",
    )
