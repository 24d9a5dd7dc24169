"""``finetune``: thaw the backbone under the trained head (linear probe, then fine-tune).

Starts from the model ``register`` would build (backbone + ``train_head``'s head + the feature
manifest's preprocessing), trains it on the prepared images in the phases of ``finetune``, and
writes ``paths.finetune`` (layout in :mod:`thawline.stages.trained_model`). ``strategy: auto``
is resolved here from the training-set size and the probe's validation accuracy; a resolved
``head_only`` trains nothing: the head on cached features is then the model.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from thawline.config import Config, Finetune
from thawline.data.store import read_manifest
from thawline.files import sha256_file
from thawline.models.classifier import Classifier
from thawline.models.head import WEIGHTS as HEAD_WEIGHTS
from thawline.models.head import load_head
from thawline.stages import StageResult
from thawline.stages.assemble import build_model
from thawline.stages.trained_model import skip, train_and_save
from thawline.training.fit_head import EpochCallback
from thawline.training.strategy import StrategyChoice, choose_strategy, probe_accuracy

log = logging.getLogger(__name__)


def run(
    cfg: Config, *, progress: bool = True, on_epoch_end: EpochCallback | None = None
) -> StageResult:
    """Fine-tune the head's model on the prepared train split; keep the best epoch by val.

    Raises:
        CacheError: The head, features and backbone do not belong together (as in register).
        NonFiniteLossError: The loss became NaN/inf; no checkpoint of that epoch, no model.
        CheckpointError: Checkpoints of this plan exist but none can be resumed from.
    """
    model = with_image_size(build_model(cfg), cfg.finetune.image_size)
    choice = resolve_strategy(cfg)
    log.info("finetune: strategy %s: %s", choice.strategy, choice.reason)
    record = {"strategy": choice.strategy, "reason": choice.reason} | start_fingerprints(cfg)
    if choice.strategy == "head_only":
        return skip(cfg.paths.finetune, record)
    opts = cfg.finetune.model_copy(update={"strategy": choice.strategy})
    checkpoints = cfg.paths.checkpoints / "finetune"
    return train_and_save(
        cfg, model, opts, cfg.paths.finetune, record,
        checkpoints=checkpoints, on_epoch_end=on_epoch_end, progress=progress,
    )  # fmt: skip


def resolve_strategy(cfg: Config) -> StrategyChoice:
    """``finetune.strategy``, with ``auto`` decided by data size and the linear probe."""
    if cfg.finetune.strategy != "auto":
        return StrategyChoice(cfg.finetune.strategy, "set in params (finetune.strategy)")
    train_size = read_manifest(cfg.paths.prepared)["splits"]["train"]["count"]
    _, meta = load_head(cfg.paths.head)
    return choose_strategy(train_size, probe_accuracy(meta), cfg.finetune.auto_probe_good)


def resolved_options(cfg: Config) -> Finetune:
    """The ``finetune`` section with ``auto`` replaced by its choice (the scratch budget)."""
    return cfg.finetune.model_copy(update={"strategy": resolve_strategy(cfg).strategy})


def start_fingerprints(cfg: Config) -> dict[str, Any]:
    """What the fine-tune starts from; evaluate refuses a model whose start has changed."""
    return {
        "prepared_fingerprint": read_manifest(cfg.paths.prepared)["fingerprint"],
        "head_sha256": sha256_file(cfg.paths.head / HEAD_WEIGHTS),
    }


def with_image_size(model: Classifier, size: int | None) -> Classifier:
    """Fine-tune (and later predict) at ``size`` instead of the extraction size, when set."""
    if size is None or size == model.preprocess.size:
        return model
    model.preprocess = dataclasses.replace(model.preprocess, size=size)
    model.spec = {**model.spec, "preprocess": model.preprocess.spec()}
    return model
