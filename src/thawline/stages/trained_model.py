"""A model trained on the prepared images (``finetune`` and ``scratch``): training and its folder.

Both stages write the same layout, which ``evaluate`` reads back::

    <folder>/model/        model.safetensors + model.json (load_classifier)
    <folder>/record.json   what was trained and how: strategy and reason, history, best epoch,
                           seconds, and the fingerprints it started from (staleness checks)

and keep resumable per-epoch checkpoints in ``paths.checkpoints/<stage>/<plan>/`` (outside the
stage's DVC output, which DVC deletes before rerunning a stage: a rerun after a crash resumes).

Under torchrun every rank trains (DistributedDataParallel) and rank 0 alone writes the folder.

A stage that decides not to train (``finetune`` with strategy head_only, ``scratch`` disabled)
writes only ``record.json`` with ``trained: false`` and removes any older ``model/``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from thawline import distributed
from thawline.config import Config, Finetune
from thawline.data.store import load_split, read_manifest
from thawline.evaluation import EvaluationError
from thawline.files import read_json, sha256_file, write_json
from thawline.models.classifier import WEIGHTS, Classifier, load_classifier, save_classifier
from thawline.stages import StageResult, training_metrics
from thawline.training.batches import resolve_device
from thawline.training.finetune import fine_tune
from thawline.training.fit_head import EpochCallback

log = logging.getLogger(__name__)
RECORD, MODEL = "record.json", "model"
Data = tuple[torch.Tensor, torch.Tensor]  # uint8 images [N, 3, S, S], int64 labels [N]


def train_and_save(
    cfg: Config,
    model: Classifier,
    opts: Finetune,
    folder: Path,
    record: dict[str, Any],
    *,
    checkpoints: Path,
    on_epoch_end: EpochCallback | None,
    progress: bool,
    setup_seconds: float = 0.0,
) -> StageResult:
    """Train ``model`` on the prepared train split (best epoch by val) and write ``folder``.

    ``record`` (strategy, reason, start fingerprints...) is saved with the training results;
    ``setup_seconds`` (preparing the start: the finetune head's refit) count in its seconds.
    """
    with distributed.join(resolve_device(opts.device)) as world:
        return _train_and_save(
            cfg, model, opts, folder, record, checkpoints=checkpoints,
            on_epoch_end=on_epoch_end, progress=progress, world=world,
            setup_seconds=setup_seconds,
        )  # fmt: skip


def load_training_data(cfg: Config) -> tuple[Data, Data | None]:
    """The prepared train split and the val split (None when there is none), memory-mapped."""
    splits = read_manifest(cfg.paths.prepared)["splits"]
    train = load_split(cfg.paths.prepared, "train")
    if not splits.get("val", {}).get("count"):
        return (train.images, train.labels), None
    val = load_split(cfg.paths.prepared, "val")
    return (train.images, train.labels), (val.images, val.labels)


def _train_and_save(cfg, model, opts, folder, record, *, checkpoints, on_epoch_end, progress,
                    world, setup_seconds) -> StageResult:  # fmt: skip
    train, val = load_training_data(cfg)
    if world.main:
        (folder / RECORD).unlink(missing_ok=True)  # written last: marks a complete result
    result = fine_tune(
        model, train, val, opts, cfg.seed, checkpoint_dir=checkpoints,
        on_epoch_end=on_epoch_end, progress=progress, world=world,
    )  # fmt: skip
    seconds = result.seconds + setup_seconds
    metrics = training_metrics(result.best, result.best_epoch, result.epochs, seconds)
    if not world.main:
        return StageResult(outputs={}, metrics=metrics)
    if result.resumed_from:
        log.info("%s: resumed from the checkpoint of epoch %d", folder, result.resumed_from)
    model_dir = save_classifier(result.model, folder / MODEL)
    record = record | {
        "trained": True,
        "precision": result.precision,
        "image_size": result.model.preprocess.size,
        "processes": world.size,
        "best_epoch": result.best_epoch,  # 0: the starting model was never beaten
        "best": result.best,
        "epochs": result.epochs,
        "rollbacks": result.rollbacks,
        "seconds": seconds,  # training and validation, plus setting up the start
        "resumed_from": result.resumed_from,
        "history": result.history,
        "model_sha256": sha256_file(model_dir / WEIGHTS),
    }
    write_json(folder / RECORD, record)
    info = {k: v for k, v in record.items() if k != "history"}
    outputs = {"model": model_dir, "record": folder / RECORD}
    return StageResult(outputs=outputs, metrics=metrics, info=info)


def skip(folder: Path, record: dict[str, Any]) -> StageResult:
    """Record that nothing was trained (and why); remove an older model so none looks current."""
    if distributed.env_rank() != 0:  # under torchrun rank 0 writes for all
        return StageResult(outputs={}, info=record | {"trained": False})
    shutil.rmtree(folder / MODEL, ignore_errors=True)
    write_json(folder / RECORD, record | {"trained": False})
    log.info("%s: %s", folder, record.get("reason", "not trained"))
    return StageResult(outputs={"record": folder / RECORD}, info=record | {"trained": False})


def read_record(folder: Path) -> dict[str, Any] | None:
    """The stage's record, or None when the stage never finished in ``folder``."""
    path = folder / RECORD
    return read_json(path) if path.is_file() else None


def load_trained(folder: Path, record: dict[str, Any]) -> Classifier:
    """The trained model of ``folder``, checked to be the one its record describes.

    Raises:
        EvaluationError: The model is missing or is not the one the record was written for.
    """
    weights = folder / MODEL / WEIGHTS
    if not weights.is_file() or sha256_file(weights) != record.get("model_sha256"):
        raise EvaluationError(
            f"{weights}: missing or not the model {folder / RECORD} describes; rerun the stage "
            "that wrote it"
        )
    return load_classifier(folder / MODEL)
