"""``finetune``: thaw the backbone under the trained head (linear probe, then fine-tune).

Starts from the model ``register`` would build (backbone + ``train_head``'s head + the feature
manifest's preprocessing), trains it on the prepared images in the phases of ``finetune``, and
writes ``paths.finetune``: ``checkpoints/`` (one per epoch, resumable), ``model/`` (safetensors +
JSON, loadable with ``load_classifier``) and ``history.json``.
"""

from __future__ import annotations

import dataclasses
import logging

from thawline.config import Config
from thawline.data.store import load_split, read_manifest
from thawline.files import write_json
from thawline.models.classifier import Classifier, save_classifier
from thawline.stages import StageResult, training_metrics
from thawline.stages.assemble import build_model
from thawline.training.finetune import fine_tune
from thawline.training.fit_head import EpochCallback

log = logging.getLogger(__name__)


def run(
    cfg: Config, *, progress: bool = True, on_epoch_end: EpochCallback | None = None
) -> StageResult:
    """Fine-tune the head's model on the prepared train split; keep the best epoch by val.

    Raises:
        CacheError: The head, features and backbone do not belong together (as in register).
        NonFiniteLossError: The loss became NaN/inf; no checkpoint of that epoch, no model.
        CheckpointError: Checkpoints exist but none can be resumed from.
    """
    model = with_image_size(build_model(cfg), cfg.finetune.image_size)
    splits = read_manifest(cfg.paths.prepared)["splits"]
    train = load_split(cfg.paths.prepared, "train")
    val = load_split(cfg.paths.prepared, "val") if splits.get("val", {}).get("count") else None
    result = fine_tune(
        model, (train.images, train.labels), None if val is None else (val.images, val.labels),
        cfg.finetune, cfg.seed, checkpoint_dir=cfg.paths.finetune / "checkpoints",
        on_epoch_end=on_epoch_end, progress=progress,
    )  # fmt: skip
    if result.resumed_from:
        log.info("finetune: resumed from the checkpoint of epoch %d", result.resumed_from)
    model_dir = save_classifier(result.model, cfg.paths.finetune / "model")
    history = cfg.paths.finetune / "history.json"
    write_json(
        history,
        {"best_epoch": result.best_epoch, "seconds": result.seconds, "history": result.history},
    )
    epochs = len(result.history)
    metrics = training_metrics(result.best, result.best_epoch, epochs, result.seconds)
    info = {"resumed_from": result.resumed_from, "strategy": cfg.finetune.strategy}
    return StageResult(outputs={"model": model_dir, "history": history}, metrics=metrics, info=info)


def with_image_size(model: Classifier, size: int | None) -> Classifier:
    """Fine-tune (and later predict) at ``size`` instead of the extraction size, when set."""
    if size is None or size == model.preprocess.size:
        return model
    model.preprocess = dataclasses.replace(model.preprocess, size=size)
    model.spec = {**model.spec, "preprocess": model.preprocess.spec()}
    return model
