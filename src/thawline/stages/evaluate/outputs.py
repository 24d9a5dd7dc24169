"""What each model predicts on a split: the head on cached features, a model trained on the
prepared items (fine-tuned, scratch), the classical text baseline; and the chosen model's
temperature, fitted on its validation predictions."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from thawline.config import Config
from thawline.data.store import PreparedStore
from thawline.devices import resolve_device
from thawline.errors import EvaluationError
from thawline.evaluation.temperature import TemperatureFit, fit_temperature, no_fit
from thawline.evaluation.tfidf import BASELINE, tfidf_svm
from thawline.features.assemble import check_head
from thawline.features.cache import FeatureCache
from thawline.files import sha256_file
from thawline.models.storage import head_files, load_head
from thawline.precision_choice import choose_precision
from thawline.stage_table import MODELS, trained_by
from thawline.training.records import read_record
from thawline.training.strategy import probe_accuracy
from thawline.training.trained_model import load_trained
from thawline.training.validate import PREDICT_BATCH, logits_and_tta, predict_logits

log = logging.getLogger(__name__)
HEAD_ONLY = MODELS[0]  # the probe: the head on cached features


@dataclass
class ModelOutput:
    """What a model predicted on the evaluated split, in the split's row order."""

    probs: np.ndarray  # [N, C]; float64 keeps tiny probabilities for the log-loss
    labels: np.ndarray  # int64 [N]
    model: str  # head_only | finetuned | scratch
    history: list[dict] = field(default_factory=list)  # per-epoch training metrics
    val_accuracy: float | None = None  # best validation accuracy in training: what chooses
    details: dict[str, str] = field(default_factory=dict)  # provenance, kept in summary.json
    tta_probs: np.ndarray | None = None  # [N, C] averaged over evaluate.tta's views, if any


def model_outputs(
    cfg: Config, store: PreparedStore
) -> tuple[dict[str, ModelOutput], dict[str, str]]:
    """Every trained model's predictions on the evaluated split, and the models left out (why).

    The head on cached features always counts (it must exist). A model trained on images counts
    when its stage trained one from the current data (and, fine-tuned, the current head); an
    out-of-date one is left out with a warning, unless ``evaluate.model`` asks for it.
    """
    outputs = {HEAD_ONLY: head_on_cached_features(cfg, store)}
    if store.modality == "text":
        outputs[BASELINE] = classical_baseline(cfg, store)
    skipped = {}
    for name in MODELS[1:]:
        entry = trained_by(name)
        folder = getattr(cfg.paths, entry.output)
        record = read_record(folder)
        if record is None and (folder / "model").exists():
            problem = f"no record.json: the last '{entry.name}' did not finish"
            log.warning("evaluate: leaving out %s (%s): %s", name, folder, problem)
            skipped[name] = problem
        if record is None or not record.get("trained"):
            continue
        problem = _stale(cfg, store, name, record)
        if problem is None:
            outputs[name] = trained_on_images(cfg, store, name, folder, record)
        elif cfg.evaluate.model == name:
            raise EvaluationError(f"{folder}: {problem}; rerun 'thawline stage {entry.name}'")
        else:
            log.warning("evaluate: leaving out %s (%s): %s", name, folder, problem)
            skipped[name] = problem
    return outputs, skipped


def calibrate(cfg: Config, store: PreparedStore, chosen: str) -> TemperatureFit:
    """The temperature of the chosen model, fitted on its validation predictions (never on the
    evaluated split); T = 1 when there is nothing to fit it on."""
    if not cfg.evaluate.temperature:
        return no_fit("evaluate.temperature is false")
    if cfg.evaluate.split == "val" or "val" not in store.splits:
        return no_fit("no validation split apart from the evaluated one to fit a temperature on")
    if chosen == HEAD_ONLY:
        val = head_on_cached_features(cfg, store, "val")
    else:
        folder = getattr(cfg.paths, trained_by(chosen).output)
        val = trained_on_images(cfg, store, chosen, folder, read_record(folder) or {}, "val")
    fit = fit_temperature(val.probs, val.labels)
    log.info("evaluate: temperature scaling of %s: %s", chosen, fit.reason)
    return fit


def _stale(cfg: Config, store: PreparedStore, name: str, record: dict) -> str | None:
    if record.get("prepared_fingerprint") != store.fingerprint:
        return f"trained on other prepared data than {cfg.paths.prepared} holds"
    head = head_files(cfg.paths.head).weights
    if "head_sha256" in record and record["head_sha256"] != sha256_file(head):
        return f"fine-tuned from another head than {cfg.paths.head} holds"
    return None


def classical_baseline(cfg: Config, store: PreparedStore) -> ModelOutput:
    """TF-IDF + linear SVM on the prepared texts: compared, never chosen or registered."""
    train, data = store.load("train"), store.load(cfg.evaluate.split)
    probs, seconds = tfidf_svm(train.texts, train.labels.numpy(), data.texts, cfg.seed)
    return ModelOutput(
        probs=probs, labels=data.labels.numpy().astype(np.int64), model=BASELINE,
        details={"model": "scikit-learn TfidfVectorizer(1-2 grams) + LinearSVC, calibrated",
                 "weights_sha256": "", "train_seconds": f"{seconds:.2f}"},
    )  # fmt: skip


def trained_on_images(
    cfg: Config,
    store: PreparedStore,
    name: str,
    folder: Path,
    record: dict,
    split: str | None = None,
) -> ModelOutput:
    """Run a model trained on the prepared items (fine-tuned or scratch) over ``split`` (default:
    the evaluated split)."""
    model = load_trained(folder, record)
    device = resolve_device("auto")
    # fp32 by default (evaluate.precision): what predict, the pyfunc and the ONNX file compute
    requested = cfg.evaluate.precision
    precision = choose_precision(
        requested, device, model, batch=PREDICT_BATCH, training=False, key="evaluate.precision"
    ).precision
    data = store.load(split or cfg.evaluate.split)
    model, tta = model.to(device), None
    if split is None and cfg.evaluate.tta != "none" and model.modality == "image":
        logits, tta = logits_and_tta(model, data.inputs, cfg.evaluate.tta, precision=precision)
    else:
        logits = predict_logits(model, data.inputs, precision=precision)
    return ModelOutput(
        probs=torch.softmax(logits.double(), dim=1).numpy(),  # float64: see head_on_cached...
        labels=data.labels.numpy().astype(np.int64),
        model=name,
        history=list(record.get("history") or []),
        val_accuracy=(record.get("best") or {}).get("val_accuracy"),
        details={
            "folder": str(folder),
            "strategy": record.get("strategy", name),
            "reason": record.get("reason", ""),
            "image_size": str(model.preprocess.size),
            "precision": precision.name,  # evaluate.precision's answer on this machine
            # finetune.ema: whether validation preferred the averaged weights (and so they are it)
            "weights": str((record.get("best") or {}).get("weights", "raw")),
            "weights_sha256": record["model_sha256"],
        },
        tta_probs=None if tta is None else tta.double().numpy(),
    )


def head_on_cached_features(
    cfg: Config, store: PreparedStore, split: str | None = None
) -> ModelOutput:
    """Apply the trained head to the cached features of ``split`` (default: the evaluated one);
    no backbone."""
    folder = cfg.paths.head
    for path in head_files(folder):
        if not path.is_file():
            raise EvaluationError(
                f"{path}: no trained head here; run 'thawline stage train_head' first"
            )
    head, meta = load_head(folder)
    cache = FeatureCache(cfg.paths.features)
    check_head(folder, head.spec(), meta, cache, store)
    features, labels = cache.load(split or cfg.evaluate.split)
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
        val_accuracy=probe_accuracy(meta),
        details={
            "head": str(folder),
            "features_fingerprint": cache.fingerprint,
            "weights_sha256": sha256_file(head_files(folder).weights),
        },
    )
