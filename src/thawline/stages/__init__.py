"""Pipeline stages: each is one ``run(cfg) -> StageResult``, for the CLI, Prefect and tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class StageResult:
    """What a stage produced: output paths, headline metrics and details for tracking."""

    outputs: dict[str, Path]
    metrics: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def training_metrics(
    best: dict[str, float], best_epoch: int, epochs: int, seconds: float
) -> dict[str, float]:
    """The headline metrics of a training stage: the best epoch's val_* metrics and timings."""
    metrics = {k: v for k, v in best.items() if k.startswith("val_")}
    return metrics | {
        "best_epoch": float(best_epoch),
        "epochs": float(epochs),
        "train_seconds": seconds,
        "seconds_per_epoch": seconds / max(epochs, 1),
    }
