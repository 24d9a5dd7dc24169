"""``evaluate``: score the current model on a pinned split and write metrics, plot data and PNGs.

Writes ``paths.evaluation``::

    metrics.json              flat scalars for ``dvc metrics``: accuracy, macro_f1, ece, loss
                              (+ roc_auc, sensitivity, specificity for two classes)
    summary.json              model, split + fingerprint, metrics and training time (the report)
    per_class.json            precision, recall, F1 and support per class
    confusion_matrix.json     classes and counts [actual][predicted]
    most_confused.json        the largest off-diagonal confusion cells
    predictions.safetensors   labels, pred, correct, probs + split fingerprint (the champion gate)
    plots/predictions.csv     actual,predicted class names (DVC's confusion template)
    plots/calibration.csv     reliability bins: confidence, accuracy, count
    plots/history.csv         the model's training history, one row per epoch
    plots/roc.csv             two classes only: fpr, tpr
    confusion_matrix.png  reliability.png  curves.png  gallery.png  roc.png (two classes)
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from thawline.config import Config
from thawline.data.store import StoreError, load_split, read_manifest
from thawline.evaluation import EvaluationError
from thawline.evaluation.metrics import Evaluation, evaluate_predictions
from thawline.evaluation.plots import (
    plot_confusion_matrix,
    plot_reliability,
    plot_roc,
    plot_top_losses,
    plot_training_curves,
)
from thawline.evaluation.predictions import PREDICTIONS, save_predictions
from thawline.features.cache import CacheError, load_features, read_cache_manifest
from thawline.files import atomic_path, remove_stale_temps, write_json
from thawline.models.head import SPEC, WEIGHTS, load_head
from thawline.stages import StageResult

log = logging.getLogger(__name__)
METRICS, SUMMARY = "metrics.json", "summary.json"
HEAD_ONLY = "head_only"  # the strategy name of a head trained on cached features


@dataclass
class ModelOutput:
    """What a model predicted on the evaluated split, in the split's row order."""

    probs: np.ndarray  # [N, C]; float64 keeps tiny probabilities for the log-loss
    labels: np.ndarray  # int64 [N]
    model: str  # the strategy: head_only (later also finetuned, scratch)
    history: list[dict] = field(default_factory=list)  # per-epoch training metrics
    train_seconds: float | None = None
    details: dict[str, str] = field(default_factory=dict)  # provenance, kept in summary.json


def run(cfg: Config, *, progress: bool = True) -> StageResult:
    """Evaluate the model on ``cfg.evaluate.split`` and write ``cfg.paths.evaluation``.

    Args:
        cfg: The config; reads ``paths``, ``evaluate``.
        progress: Accepted like every stage's; scoring a head on cached features takes under
            a second, so there is nothing to show.

    Raises:
        StoreError: No prepared data, or no such split.
        CacheError: The feature cache is missing, corrupted or from other prepared data.
        EvaluationError: No trained head, or a head that does not fit the cache or classes.
    """
    split = cfg.evaluate.split
    prepared = read_manifest(cfg.paths.prepared)
    if split not in prepared["splits"]:
        raise StoreError(f"{cfg.paths.prepared}: no split '{split}' (evaluate.split)")
    classes = list(prepared["classes"])
    output = model_output(cfg, prepared)
    evaluation = evaluate_predictions(
        output.probs,
        output.labels,
        classes,
        bins=cfg.evaluate.calibration_bins,
        confused_top=cfg.evaluate.confused_top,
        gallery_size=cfg.evaluate.gallery_size,
    )
    info = {
        "split": split,
        "split_fingerprint": prepared["splits"][split]["fingerprint"],
        "model": output.model,
    }
    out = cfg.paths.evaluation
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    (out / METRICS).unlink(missing_ok=True)  # written last, so it marks a complete evaluation
    save_predictions(out / PREDICTIONS, output.labels, evaluation.pred, output.probs, info)
    _write_tables(out, evaluation, classes)
    _write_plot_data(out / "plots", evaluation, output, classes)
    _write_pngs(cfg, out, evaluation, output, classes)
    write_json(out / SUMMARY, _summary(info, evaluation, output, classes))
    write_json(out / METRICS, evaluation.scalars)
    log.info("evaluated %s on %s: %s", output.model, split, _fmt(evaluation.scalars))
    return StageResult(outputs={"evaluation": out}, metrics=dict(evaluation.scalars), info=info)


def model_output(cfg: Config, prepared: dict[str, Any]) -> ModelOutput:
    """The one place that decides which model is evaluated and how it is run.

    Today that is the head in ``paths.head`` applied to the cached features; a fine-tuned model
    run on the prepared images plugs in here.
    """
    return head_on_cached_features(cfg, prepared)


def head_on_cached_features(cfg: Config, prepared: dict[str, Any]) -> ModelOutput:
    """Apply the trained head to the cached features of the evaluated split (no backbone)."""
    folder = cfg.paths.head
    for name in (SPEC, WEIGHTS):
        if not (folder / name).is_file():
            raise EvaluationError(
                f"{folder / name}: no trained head here; run 'thawline stage train_head' first"
            )
    head, meta = load_head(folder)
    cache = read_cache_manifest(cfg.paths.features)
    if cache.get("fingerprint_parts", {}).get("data") != prepared["fingerprint"]:
        raise CacheError(
            f"{cfg.paths.features / 'manifest.json'}: the features were extracted from other "
            f"prepared data than {cfg.paths.prepared}; rerun 'thawline stage extract'"
        )
    trained_on = meta.get("feature_fingerprint")  # absent in heads saved by hand
    if trained_on is not None and trained_on != cache["fingerprint"]:
        raise EvaluationError(
            f"{folder / SPEC}: the head was trained on other features ({trained_on[:12]}) than "
            f"{cfg.paths.features} holds ({cache['fingerprint'][:12]}); rerun "
            "'thawline stage train_head'"
        )
    features, labels = load_features(cfg.paths.features, cfg.evaluate.split)
    _check_head_fits(head.spec(), features.shape[1], len(prepared["classes"]), folder / SPEC)
    with torch.inference_mode():
        logits = torch.cat([head(chunk) for chunk in features.split(8192)])
    # float64: a confident head's float32 softmax rounds small true-class probabilities to 0,
    # which would turn the log-loss into a clipped guess.
    probs = torch.softmax(logits.double(), dim=1)
    return ModelOutput(
        probs=probs.numpy(),
        labels=labels.numpy().astype(np.int64),
        model=HEAD_ONLY,
        history=list(meta.get("history") or []),
        train_seconds=meta.get("seconds"),
        details={"head": str(folder), "features_fingerprint": cache["fingerprint"]},
    )


def _check_head_fits(spec: dict, width: int, num_classes: int, path: Path) -> None:
    if spec["in_features"] != width:
        raise EvaluationError(
            f"{path}: the head takes {spec['in_features']} features but the cache has {width}; "
            "the features changed since training, rerun 'thawline stage train_head'"
        )
    if spec["num_classes"] != num_classes:
        raise EvaluationError(
            f"{path}: the head predicts {spec['num_classes']} classes but the data has "
            f"{num_classes}; rerun 'thawline stage train_head'"
        )


def _write_tables(out: Path, evaluation: Evaluation, classes: list[str]) -> None:
    write_json(out / "per_class.json", evaluation.per_class)
    matrix = evaluation.confusion.tolist()
    write_json(out / "confusion_matrix.json", {"classes": classes, "matrix": matrix})
    write_json(out / "most_confused.json", evaluation.most_confused)


def _write_plot_data(folder: Path, ev: Evaluation, output: ModelOutput, classes: list[str]):
    """CSV files for ``dvc plots``; a file that does not apply to this run is removed."""
    _write_csv(
        folder / "predictions.csv",
        ["actual", "predicted"],
        [[classes[a], classes[p]] for a, p in zip(output.labels, ev.pred, strict=True)],
    )
    calib = ev.calibration
    _write_csv(
        folder / "calibration.csv",
        ["bin", "lower", "upper", "confidence", "accuracy", "count"],
        [
            [b, calib.edges[b], calib.edges[b + 1], calib.confidence[b], calib.accuracy[b], n]
            for b, n in enumerate(calib.count.tolist())
            if n > 0  # an empty bin has no accuracy to plot
        ],
    )
    keys = list(dict.fromkeys(["epoch", *(k for row in output.history for k in row)]))
    rows = [[row.get(k, "") for k in keys] for row in output.history]
    _write_csv(folder / "history.csv", keys, rows)
    if ev.roc is None:
        (folder / "roc.csv").unlink(missing_ok=True)
    else:
        points = zip(ev.roc.fpr, ev.roc.tpr, strict=True)
        _write_csv(folder / "roc.csv", ["fpr", "tpr"], [list(p) for p in points])


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([[_cell(v) for v in row] for row in rows])
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue())


def _cell(value: Any) -> Any:
    if isinstance(value, float | np.floating):
        return f"{float(value):.6g}"
    return value.item() if isinstance(value, np.generic) else value


def _write_pngs(cfg: Config, out: Path, ev: Evaluation, output: ModelOutput, classes: list[str]):
    plot_confusion_matrix(ev.confusion, classes, out / "confusion_matrix.png")
    plot_reliability(ev.calibration, out / "reliability.png")
    plot_training_curves(output.history, out / "curves.png")
    if ev.roc is None:
        (out / "roc.png").unlink(missing_ok=True)
    else:
        plot_roc(ev.roc, out / "roc.png", positive=classes[1])
    if len(ev.top_losses) == 0:
        (out / "gallery.png").unlink(missing_ok=True)
        return
    images = _split_images(cfg, output.labels)[ev.top_losses]
    titles = [
        f"true: {classes[output.labels[i]]}\n"
        f"pred: {classes[ev.pred[i]]} (p={output.probs[i, ev.pred[i]]:.2f})"
        for i in ev.top_losses
    ]
    plot_top_losses(images, titles, out / "gallery.png")


def _split_images(cfg: Config, labels: np.ndarray) -> np.ndarray:
    """The evaluated split's uint8 images, checked to be in the same row order as ``labels``."""
    data = load_split(cfg.paths.prepared, cfg.evaluate.split)
    if not np.array_equal(data.labels.numpy(), labels):
        raise CacheError(
            f"{cfg.paths.features}: the cached labels of '{cfg.evaluate.split}' differ from "
            f"{cfg.paths.prepared}; rerun 'thawline stage extract'"
        )
    return data.images.numpy()


def _summary(info: dict, ev: Evaluation, output: ModelOutput, classes: list[str]) -> dict:
    return {
        **info,
        "strategy": output.model,
        "num_examples": len(output.labels),
        "classes": classes,
        "metrics": ev.scalars,
        "wall_time_s": output.train_seconds,
        "details": output.details,
    }


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
