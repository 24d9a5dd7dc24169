"""A model trained on the prepared images (``finetune`` and ``scratch``): training and its folder.

Both stages write the same layout, which ``evaluate`` reads back::

    <folder>/model/        model.safetensors + model.json (load_classifier)
    <folder>/record.json   what was trained and how: strategy and reason, history, best epoch,
                           rollbacks, and the fingerprints it started from (staleness checks)
    <folder>/plan.json     finetune only: the resolved strategy, why, and its budget in epochs,
                           which the scratch baseline trains for (a file of its own, so that a
                           fine-tune rerun with the same plan does not rerun the baseline)

and the run's statistics (seconds, images per second per epoch, the checkpoint it resumed from)
to ``<paths.stats>/<stage>.json``: not in the record, which DVC versions.

and keep resumable per-epoch checkpoints in ``paths.checkpoints/<stage>/<plan>/`` (outside the
stage's DVC output, which DVC deletes before rerunning a stage: a rerun after a crash resumes).

Under torchrun every rank trains (DistributedDataParallel) and rank 0 alone writes the folder.

A stage that decides not to train (``finetune`` with strategy head_only, ``scratch`` disabled)
writes only ``record.json`` with ``trained: false`` and removes any older ``model/``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from thawline import distributed
from thawline.config import Config, FinetuneParams
from thawline.data.store import PreparedStore
from thawline.devices import resolve_device
from thawline.errors import EvaluationError
from thawline.files import sha256_file, write_json
from thawline.models.classifier import Classifier
from thawline.models.storage import MODEL_WEIGHTS as WEIGHTS
from thawline.models.storage import load_classifier, save_classifier
from thawline.run_stats import write_stats
from thawline.stage_table import StageResult, training_metrics
from thawline.training.fit_head import EpochCallback
from thawline.training.records import MODEL, RECORD
from thawline.training.thaw_loop import fine_tune

log = logging.getLogger(__name__)
RUN_ONLY = ("images_per_second",)  # history entries that describe the run, not the model
CURVE = ("lrs", "losses")  # a range test's curve: plotted by the stage, not kept in the record
Data = tuple[torch.Tensor, torch.Tensor]  # uint8 images [N, 3, S, S], int64 labels [N]


def train_and_save(
    cfg: Config,
    model: Classifier,
    opts: FinetuneParams,
    folder: Path,
    record: dict[str, Any],
    *,
    checkpoints: Path,
    on_epoch_end: EpochCallback | None,
    progress: bool,
    stats: dict[str, Any],
) -> StageResult:
    """Train ``model`` on the prepared train split (best epoch by val) and write ``folder``.

    ``record`` (strategy, reason, start fingerprints...) is saved with the training results;
    ``stats`` (``stage``, and the seconds spent preparing the start, ``setup_seconds``) with the
    run's statistics.
    """
    with distributed.join(resolve_device(opts.device)) as world:
        return _train_and_save(
            cfg, model, opts, folder, record, checkpoints=checkpoints,
            on_epoch_end=on_epoch_end, progress=progress, world=world, stats=stats,
        )  # fmt: skip


def load_training_data(cfg: Config) -> tuple[Data, Data | None]:
    """The prepared train split and the val split (None when there is none), memory-mapped."""
    store = PreparedStore(cfg.paths.prepared)
    train = store.load("train")
    if not store.count("val"):
        return (train.inputs, train.labels), None
    val = store.load("val")
    return (train.inputs, train.labels), (val.inputs, val.labels)


def _train_and_save(cfg, model, opts, folder, record, *, checkpoints, on_epoch_end, progress,
                    world, stats) -> StageResult:  # fmt: skip
    train, val = load_training_data(cfg)
    if world.main:
        (folder / RECORD).unlink(missing_ok=True)  # written last: marks a complete result
    result = fine_tune(
        model, train, val, opts, cfg.seed, checkpoint_dir=checkpoints,
        on_epoch_end=on_epoch_end, progress=progress, world=world, label=stats["stage"],
    )  # fmt: skip
    seconds = result.seconds + stats.get("setup_seconds", 0.0)
    metrics = training_metrics(result.best, result.best_epoch, result.epochs, seconds)
    if not world.main:
        return StageResult(outputs={}, metrics=metrics)
    if result.resumed_from:
        log.info("%s: resumed from the checkpoint of epoch %d", folder, result.resumed_from)
    model_dir = save_classifier(result.model, folder / MODEL)
    record = record | {
        "trained": True,
        "precision": result.precision,
        "precision_choice": result.precision_choice,
        "activation_cache": result.activation_cache,
        "image_size": result.model.preprocess.size,
        "processes": world.size,
        "best_epoch": result.best_epoch,  # 0: the starting model was never beaten
        "best": result.best,
        "epochs": result.epochs,
        "rollbacks": result.rollbacks,
        "lr_finds": [{k: v for k, v in f.items() if k not in CURVE} for f in result.lr_finds],
        "history": [{k: v for k, v in row.items() if k not in RUN_ONLY} for row in result.history],
        "model_sha256": sha256_file(model_dir / WEIGHTS),
    }
    write_json(folder / RECORD, record)
    write_stats(cfg.paths.stats, stats["stage"], {
        "seconds": seconds, "setup_seconds": stats.get("setup_seconds", 0.0),
        "resumed_from": result.resumed_from,
        "images_per_second": [row.get("images_per_second") for row in result.history],
    })  # fmt: skip
    info = {k: v for k, v in record.items() if k != "history"} | {"lr_finds": result.lr_finds}
    metrics |= {f"lr_found_phase{f['phase']}": f["lr"] for f in result.lr_finds}
    outputs = {"model": model_dir, "record": folder / RECORD}
    return StageResult(outputs=outputs, metrics=metrics, info=info)


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
