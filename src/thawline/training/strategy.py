"""``finetune.strategy: auto``: how much of the backbone to train, and why.

The seeds' rule of thumb, by training-set size: under 1,000 images the backbone is not worth
thawing (a linear probe on its features is the model); from 1,000 to 10,000 thaw gradually from
the top; over 10,000 fine-tune everything. The linear probe trained on the cached features adds
evidence for large sets: a probe that is already good means the features transfer, and gradual
thawing keeps them at a lower cost; a probe far from good (a far domain) is what full
fine-tuning is for.
"""

from __future__ import annotations

from dataclasses import dataclass

SMALL, LARGE = 1_000, 10_000


@dataclass(frozen=True)
class StrategyChoice:
    strategy: str  # head_only | gradual | full
    reason: str


def choose_strategy(
    train_size: int, probe_accuracy: float | None, probe_good: float
) -> StrategyChoice:
    """The strategy for ``train_size`` training images and the probe's val accuracy (or None)."""
    if train_size < SMALL:
        return StrategyChoice(
            "head_only",
            f"{train_size} training images (< {SMALL:,}): too few to fine-tune the backbone "
            "without overfitting; the head on cached features is the model",
        )
    if train_size <= LARGE:
        return StrategyChoice(
            "gradual",
            f"{train_size} training images ({SMALL:,}-{LARGE:,}): thaw gradually from the top "
            "with discriminative learning rates",
        )
    size = f"{train_size} training images (> {LARGE:,})"
    if probe_accuracy is None:
        return StrategyChoice("full", f"{size} and no probe validation accuracy: fine-tune all")
    if probe_accuracy < probe_good:
        return StrategyChoice(
            "full",
            f"{size} and the linear probe reaches only {probe_accuracy:.4f} val accuracy "
            f"(< auto_probe_good {probe_good}): the features fit this domain poorly, so every "
            "layer is fine-tuned",
        )
    return StrategyChoice(
        "gradual",
        f"{size}, but the linear probe already reaches {probe_accuracy:.4f} val accuracy "
        f"(>= auto_probe_good {probe_good}): the features transfer, so thaw gradually",
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
