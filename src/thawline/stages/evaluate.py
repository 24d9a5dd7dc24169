"""``evaluate``: score every trained model on a pinned split; report the chosen one in full.

The models: the head on cached features (``head_only``), the fine-tuned model (``finetuned``,
when ``finetune`` trained one) and the from-scratch baseline (``scratch``, when enabled). The one
that ``register`` registers is chosen by ``evaluate.model``; ``best`` takes the higher
*validation* accuracy of head_only and finetuned (the test split never chooses). The scratch
baseline is compared, never chosen.

Writes ``paths.evaluation``, for the chosen model::

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

and, for every evaluated model, ``compare/<model>/metrics.json`` and ``summary.json`` (the
report's comparison table).
"""

from __future__ import annotations

import csv
import io
import logging
import shutil
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
from thawline.files import atomic_path, remove_stale_temps, sha256_file, write_json
from thawline.models.head import SPEC, WEIGHTS, load_head
from thawline.stages import StageResult
from thawline.stages.trained_model import load_trained, read_record
from thawline.training.batches import resolve_device, resolve_precision
from thawline.training.strategy import probe_accuracy
from thawline.training.validate import predict_logits

log = logging.getLogger(__name__)
METRICS, SUMMARY, COMPARE = "metrics.json", "summary.json", "compare"
HEAD_ONLY = "head_only"  # the strategy name of a head trained on cached features
CANDIDATES = ("head_only", "finetuned")  # what evaluate.model may choose; scratch is a baseline


@dataclass
class ModelOutput:
    """What a model predicted on the evaluated split, in the split's row order."""

    probs: np.ndarray  # [N, C]; float64 keeps tiny probabilities for the log-loss
    labels: np.ndarray  # int64 [N]
    model: str  # head_only | finetuned | scratch
    history: list[dict] = field(default_factory=list)  # per-epoch training metrics
    train_seconds: float | None = None  # this model's own training (not its upstream stages)
    val_accuracy: float | None = None  # best validation accuracy in training: what chooses
    upstream_seconds: float = 0.0  # the stages it builds on: extraction (+ head for finetuned)
    details: dict[str, str] = field(default_factory=dict)  # provenance, kept in summary.json


def run(cfg: Config, *, progress: bool = True) -> StageResult:
    """Evaluate the model on ``cfg.evaluate.split`` and write ``cfg.paths.evaluation``.

    Args:
        cfg: The config; reads ``paths``, ``evaluate``.
        progress: Accepted like every stage's; scoring takes seconds (the head reads cached
            features, image models run over one split), so there is nothing to show.

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
    outputs, skipped = model_outputs(cfg, prepared)
    chosen, reason = choose_model(cfg.evaluate.model, outputs)
    output = outputs[chosen]
    log.info("evaluate: %s is the model (%s)", chosen, reason)
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
        "reason": reason,
        "skipped": skipped,
    }
    out = cfg.paths.evaluation
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    (out / METRICS).unlink(missing_ok=True)  # written last, so it marks a complete evaluation
    # What register checks: that it registers the very model these predictions came from.
    meta = {k: info[k] for k in ("split", "split_fingerprint", "model")}
    meta["weights_sha256"] = output.details["weights_sha256"]
    save_predictions(out / PREDICTIONS, output.labels, evaluation.pred, output.probs, meta)
    _write_tables(out, evaluation, classes)
    _write_plot_data(out / "plots", evaluation, output, classes)
    _write_pngs(cfg, out, evaluation, output, classes)
    compared = _write_comparison(cfg, out / COMPARE, outputs, evaluation, info, classes)
    write_json(out / SUMMARY, _summary(info, evaluation, output, classes))
    write_json(out / METRICS, evaluation.scalars)
    log.info("evaluated %s on %s: %s", output.model, split, _fmt(evaluation.scalars))
    metrics = dict(evaluation.scalars) | compared
    return StageResult(outputs={"evaluation": out}, metrics=metrics, info=info)


def model_outputs(
    cfg: Config, prepared: dict[str, Any]
) -> tuple[dict[str, ModelOutput], dict[str, str]]:
    """Every trained model's predictions on the evaluated split, and the models left out (why).

    The head on cached features always counts (it must exist). A fine-tuned or scratch model
    counts when its stage trained one from the current data (and, fine-tuned, the current
    head); an out-of-date one is left out with a warning, unless ``evaluate.model`` asks for it.
    """
    outputs = {HEAD_ONLY: head_on_cached_features(cfg, prepared)}
    skipped = {}
    for name, folder in (("finetuned", cfg.paths.finetune), ("scratch", cfg.paths.scratch)):
        record = read_record(folder)
        if record is None and (folder / "model").exists():
            problem = f"no record.json: the last '{_stage(name)}' did not finish"
            log.warning("evaluate: leaving out %s (%s): %s", name, folder, problem)
            skipped[name] = problem
        if record is None or not record.get("trained"):
            continue
        problem = _stale(cfg, prepared, name, record)
        if problem is None:
            outputs[name] = trained_on_images(cfg, name, folder, record)
        elif cfg.evaluate.model == name:
            raise EvaluationError(f"{folder}: {problem}; rerun 'thawline stage {_stage(name)}'")
        else:
            log.warning("evaluate: leaving out %s (%s): %s", name, folder, problem)
            skipped[name] = problem
    if "finetuned" in outputs:  # fine-tuning starts from the head, which needed the features
        head = outputs[HEAD_ONLY]
        outputs["finetuned"].upstream_seconds = head.upstream_seconds + (head.train_seconds or 0)
    return outputs, skipped


def choose_model(wanted: str, outputs: dict[str, ModelOutput]) -> tuple[str, str]:
    """``(model, reason)``: ``wanted``, or for ``best`` the candidate with the best val accuracy.

    Raises:
        EvaluationError: ``wanted`` names a model that was not trained.
    """
    if wanted != "best":
        if wanted not in outputs:
            raise EvaluationError(
                f"evaluate.model: '{wanted}', but no such model was trained; run "
                f"'thawline stage {_stage(wanted)}' or use evaluate.model: best"
            )
        return wanted, "set in params (evaluate.model)"
    scored = {n: o.val_accuracy for n, o in outputs.items() if n in CANDIDATES}
    if len(scored) == 1:
        return HEAD_ONLY, "the only model trained (no fine-tuned model)"
    if any(v is None for v in scored.values()):
        return "finetuned", "no validation accuracy to compare: the fine-tuned model, trained last"
    best = max(scored, key=lambda n: (scored[n], n == "finetuned"))  # ties: the fine-tuned one
    table = ", ".join(f"{n} {v:.4f}" for n, v in scored.items())
    return best, f"best validation accuracy ({table})"


def _stale(cfg: Config, prepared: dict, name: str, record: dict) -> str | None:
    if record.get("prepared_fingerprint") != prepared["fingerprint"]:
        return f"trained on other prepared data than {cfg.paths.prepared} holds"
    if name == "finetuned" and record.get("head_sha256") != sha256_file(cfg.paths.head / WEIGHTS):
        return f"fine-tuned from another head than {cfg.paths.head} holds"
    return None


def _stage(model: str) -> str:
    return {"finetuned": "finetune", "scratch": "scratch", HEAD_ONLY: "train_head"}[model]


def trained_on_images(cfg: Config, name: str, folder: Path, record: dict) -> ModelOutput:
    """Run a model trained on images (fine-tuned or scratch) over the evaluated split."""
    model = load_trained(folder, record)
    device = resolve_device("auto")
    precision = resolve_precision("auto", device, model.preprocess.size)
    data = load_split(cfg.paths.prepared, cfg.evaluate.split)
    logits = predict_logits(model.to(device), data.images, precision=precision)
    best = record.get("best") or {}
    return ModelOutput(
        probs=torch.softmax(logits.double(), dim=1).numpy(),  # float64: see head_on_cached...
        labels=data.labels.numpy().astype(np.int64),
        model=name,
        history=list(record.get("history") or []),
        train_seconds=record.get("seconds"),
        val_accuracy=best.get("val_accuracy"),
        details={
            "folder": str(folder),
            "strategy": record.get("strategy", name),
            "reason": record.get("reason", ""),
            "image_size": str(model.preprocess.size),
            "weights_sha256": record["model_sha256"],
        },
    )


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
        val_accuracy=probe_accuracy(meta),
        upstream_seconds=float(cache.get("seconds") or 0.0),
        details={
            "head": str(folder),
            "features_fingerprint": cache["fingerprint"],
            "weights_sha256": sha256_file(folder / WEIGHTS),
        },
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


def _write_comparison(
    cfg: Config,
    folder: Path,
    outputs: dict[str, ModelOutput],
    chosen: Evaluation,
    info: dict,
    classes: list[str],
) -> dict[str, float]:
    """``compare/<model>/`` for every evaluated model; their headline figures for MLflow."""
    shutil.rmtree(folder, ignore_errors=True)  # a model that is no longer trained has no row
    figures = {}
    for name, output in outputs.items():
        evaluation = chosen if name == info["model"] else evaluate_predictions(
            output.probs, output.labels, classes, bins=cfg.evaluate.calibration_bins,
            confused_top=cfg.evaluate.confused_top, gallery_size=0,
        )  # fmt: skip
        summary = _summary(info | {"model": name}, evaluation, output, classes)
        write_json(folder / name / SUMMARY, summary | {"chosen": name == info["model"]})
        write_json(folder / name / METRICS, evaluation.scalars)
        figures[f"{name}_accuracy"] = evaluation.scalars["accuracy"]
        if output.train_seconds is not None:
            figures[f"{name}_train_seconds"] = float(output.train_seconds)
    return figures


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
        # with the stages it builds on: extract (+ train_head): transfer learning's real cost
        "total_time_s": None
        if output.train_seconds is None
        else output.train_seconds + output.upstream_seconds,
        "val_accuracy": output.val_accuracy,
        "details": output.details,
    }


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
