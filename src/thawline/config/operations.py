"""The params sections after training: evaluation, tracking, the registry, the Prefect flows and
the retrain policy; and how a stage process behaves around others (``system``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from pydantic import Field, field_validator

from thawline.config.base import Section

# Test-time augmentation's settings (models/tta.py makes the views); torch-free for --help.
TTAViews = Literal["none", "flip", "flip_shift"]
TTA_CHOICES: tuple[str, ...] = get_args(TTAViews)


class EvaluateParams(Section):
    """Evaluation of the current model on a pinned split."""

    split: Literal["test", "val"] = "test"
    # The model that evaluate scores and register registers: best = the higher validation
    # accuracy of the head on cached features and the fine-tuned model.
    model: Literal["best", "head_only", "finetuned"] = "best"
    calibration_bins: int = Field(default=15, gt=1, le=100)
    gallery_size: int = Field(default=16, ge=0, le=100)  # top-loss images in the gallery PNG
    confused_top: int = Field(default=10, ge=1)  # rows in the "most confused" table
    temperature: bool = True  # fit one temperature on val, kept only if it lowers the val NLL
    cams: bool = True  # class-activation maps (image models): top losses, one right per class
    # Test-time augmentation of image models trained on images (finetuned, scratch), reported
    # beside the plain score (tta_accuracy): softmax averaged over the image and its mirror
    # (flip), and shifts too (flip_shift: 6 views); none: off. Text models have no views.
    tta: TTAViews = "flip"
    # Precision of the trained models' scoring (finetuned, scratch). fp32: the scores are what
    # predict, the served model and the ONNX file compute, prediction for prediction. auto: the
    # faster of fp32 and bf16 autocast, measured on this CPU (bf16 scores 2x faster where the
    # CPU has AMX, and can change a few predictions out of thousands).
    precision: Literal["fp32", "auto", "bf16"] = "fp32"


class TrackingParams(Section):
    """MLflow tracking. The store defaults to MLflow 3's own: SQLite beside the repo."""

    enabled: bool = True
    # null: $MLFLOW_TRACKING_URI when set, else sqlite:///mlflow.db
    uri: str | None = None
    artifacts: Path = Path("mlruns")  # artifact root for new experiments on a local store
    experiment: str = Field(default="thawline", min_length=1)


class RegistryParams(Section):
    """Model registry and the champion gate (the ``register`` stage)."""

    model_name: str = Field(default="thawline", min_length=1)
    # The challenger must beat the champion's accuracy by at least this (absolute)...
    margin: float = Field(default=0.0, ge=0, lt=1)
    # ...and a paired McNemar test on the same pinned split must reject equality at this level.
    alpha: float = Field(default=0.05, gt=0, lt=1)
    onnx: bool = True  # write model.onnx beside the saved model (checked, logged with the version)


class FlowParams(Section):
    """The Prefect flows (``pipelines/``): retries for transient failures and schedules."""

    # A stage that crashed (a locked DVC repo, a busy SQLite store, a killed worker) is retried
    # with exponential backoff; a stage that failed with its own error (bad config, NaN) is not.
    retries: int = Field(default=2, ge=0, le=10)
    retry_delay_s: float = Field(default=10.0, ge=0, le=3600)  # then x2 per further retry
    cron: str = "0 3 * * 0"  # `thawline flow serve`: the full training flow, Sundays 03:00
    retrain_cron: str = "0 * * * *"  # ...and the data-change retrain flow, hourly
    timezone: str = "UTC"

    @field_validator("cron", "retrain_cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        if len(value.split()) != 5:
            raise ValueError(f"'{value}' is not a 5-field cron expression like '0 3 * * 0'")
        return value


class RetrainParams(Section):
    """The retrain flow: what a change in the data source sets off."""

    # Fine-tune as well as retrain the head: always, never, or (auto) only when the retrained
    # head's validation accuracy falls below `escalate_below`.
    finetune: Literal["auto", "always", "never"] = "auto"
    escalate_below: float = Field(default=0.85, ge=0, le=1)


class SystemParams(Section):
    """How a stage process meets signals and other processes; never changes what it computes
    (no DVC stage lists it)."""

    # After SIGTERM/SIGINT a stage stops at its next safe point (a training step, a feature
    # shard) and writes what a rerun resumes from; still running after this long, it exits.
    # Kubernetes sends SIGKILL 30 s after SIGTERM by default.
    grace_s: float = Field(default=20.0, gt=0, le=3600)
    # A stage whose output another thawline process is writing waits this long for it (then
    # fails, naming that process); 0 fails at once.
    lock_wait_s: float = Field(default=3600.0, ge=0)
