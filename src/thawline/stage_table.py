"""The pipeline's stages, in order, and what a stage returns.

``STAGES`` is the one list: the CLI (``thawline stage <name>``, ``--nproc``), both Prefect flows,
their deployment descriptions, ``evaluate`` and the report take theirs from it, and a test holds
dvc.yaml to it. Adding a stage is a module in ``thawline/stages/`` with ``run(cfg)``, an entry
here and a stage in dvc.yaml. This module is in the base layer: it names each stage's module as
a string and imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline."""

    name: str
    description: str  # one line: `thawline stage --help`, the deployments, the report
    output: str  # the ``paths`` key of what it writes
    nproc_section: str | None = None  # the params section whose ``nproc`` runs it under torchrun
    model: str | None = None  # the model it trains, as evaluate and the report name it
    baseline: bool = False  # a model that is compared, never chosen or registered
    builds_on: tuple[str, ...] = ()  # earlier stages its model needs (the report's total time)
    enabled_by: str | None = None  # a boolean param; when false the stage only records that

    def enabled(self, cfg: Any) -> bool:
        """Whether ``cfg`` asks for this stage (a disabled one opens no MLflow run)."""
        if self.enabled_by is None:
            return True
        section, key = self.enabled_by.split(".")
        return bool(getattr(getattr(cfg, section), key))

    @property
    def module(self) -> str:
        return f"thawline.stages.{self.name}"


STAGES = (
    Stage("prepare", "decode, split and hash the data source into a uint8 store", "prepared"),
    Stage("extract", "run the frozen backbone once and cache its features", "features",
          nproc_section="extract"),
    Stage("train_head", "train the classifier head (the linear probe) on the cached features",
          "head", model="head_only", builds_on=("extract",)),
    Stage("finetune", "thaw the backbone under the head, never ending worse than its start; "
          "strategy auto picks from the data and the probe", "finetune",
          nproc_section="finetune", model="finetuned", builds_on=("extract", "train_head")),
    Stage("scratch", "the from-scratch baseline with the fine-tune's budget, when "
          "scratch.enabled", "scratch", nproc_section="finetune", model="scratch",
          baseline=True, enabled_by="scratch.enabled"),
    Stage("evaluate", "score every trained model on the pinned test split; the best by "
          "validation accuracy gets the full metrics, plots and predictions", "evaluation"),
    Stage("register", "log the complete model to MLflow; move 'champion' only through the gate",
          "registration"),
)  # fmt: skip
NAMES = tuple(stage.name for stage in STAGES)
MODELS = tuple(stage.model for stage in STAGES if stage.model)  # table order: probe first
CANDIDATES = tuple(s.model for s in STAGES if s.model and not s.baseline)  # what may be chosen


def stage(name: str) -> Stage:
    """The stage called ``name``.

    Raises:
        KeyError: No such stage (the message lists them).
    """
    for entry in STAGES:
        if entry.name == name:
            return entry
    raise KeyError(f"no stage '{name}'; stages: {', '.join(NAMES)}")


def trained_by(model: str) -> Stage:
    """The stage that trains ``model`` (head_only, finetuned, scratch)."""
    return next(entry for entry in STAGES if entry.model == model)


@dataclass
class StageResult:
    """What a stage produced: output paths, headline metrics and details for tracking."""

    outputs: dict[str, Path]
    metrics: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def training_metrics(
    best: dict[str, float], best_epoch: int, epochs: int, seconds: float
) -> dict[str, float]:
    """The headline metrics of a training stage: the best epoch's val_* metrics and timings.

    The best epoch's values are named ``best_val_*``: under the per-epoch name they would land at
    step 0 of the epoch curve in MLflow and draw a dip that never happened.
    """
    metrics = {f"best_{k}": v for k, v in best.items() if k.startswith("val_")}
    return metrics | {
        "best_epoch": float(best_epoch),
        "epochs": float(epochs),
        "train_seconds": seconds,
        "seconds_per_epoch": seconds / max(epochs, 1),
    }
