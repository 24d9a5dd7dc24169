"""``finetune``: thaw the backbone under the trained head (linear probe, then fine-tune).

Starts from the model ``register`` would build (backbone + ``train_head``'s head + the feature
manifest's preprocessing). When the fine-tune runs at another input size than the features were
extracted at, the head is first fit again on features at that size (training/start.py). Trains
on the prepared images in the phases of ``finetune``, never ending worse than epoch 0 (the
starting model), and writes ``paths.finetune`` (layout in :mod:`thawline.stages.trained_model`).
``strategy: auto`` is resolved here from the training-set size and the probe's validation
accuracy; a resolved ``head_only`` trains nothing: the head on cached features is then the model.
"""

from __future__ import annotations

import logging
from typing import Any

from thawline.config import Config, Finetune
from thawline.data.store import read_manifest
from thawline.features.cache import read_cache_manifest
from thawline.files import sha256_file
from thawline.models.head import WEIGHTS as HEAD_WEIGHTS
from thawline.models.head import load_head
from thawline.stages import StageResult
from thawline.stages.assemble import build_model
from thawline.stages.trained_model import load_training_data, skip, train_and_save
from thawline.training.batches import resolve_device, resolve_precision
from thawline.training.fit_head import EpochCallback
from thawline.training.start import Start, StartChecks, at_size, refit_head
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
    choice = resolve_strategy(cfg)
    log.info("finetune: strategy %s: %s", choice.strategy, choice.reason)
    record = {"strategy": choice.strategy, "reason": choice.reason} | start_fingerprints(cfg)
    if choice.strategy == "head_only":
        return skip(cfg.paths.finetune, record)
    opts = cfg.finetune.model_copy(update={"strategy": choice.strategy})
    start = starting_point(cfg, opts, progress)
    val = load_training_data(cfg)[1]
    checks = StartChecks(
        start, 0 if val is None else len(val[1]), len(start.model.classes), on_epoch_end
    )
    start.info["warnings"] = checks.findings  # filled in while training, saved in the record
    refit = start.info.get("refit") or {}
    return train_and_save(
        cfg, start.model, opts, cfg.paths.finetune, record | {"start": start.info},
        checkpoints=cfg.paths.checkpoints / "finetune", on_epoch_end=checks, progress=progress,
        setup_seconds=refit.get("feature_seconds", 0.0) + refit.get("head_seconds", 0.0),
    )  # fmt: skip


def starting_point(cfg: Config, opts: Finetune, progress: bool) -> Start:
    """The probe's model at the fine-tune's input size, its head fit again when that differs
    from the extraction size, and the validation accuracy its epoch 0 should match."""
    model = build_model(cfg)
    _, meta = load_head(cfg.paths.head)
    probe = probe_accuracy(meta)
    extracted = model.preprocess.size
    info: dict[str, Any] = {"probe_image_size": extracted, "probe_val_accuracy": probe}
    device = resolve_device(opts.device)
    size = opts.image_size or extracted
    precision = resolve_precision(opts.precision, device, size)
    if size == extracted:
        cache = read_cache_manifest(cfg.paths.features)["fingerprint_parts"]
        info["why_gap"] = (
            f"the probe was scored on cached features ({cache['precision']}, stored as "
            f"{cache['dtype']}) and the fine-tune runs the backbone in {precision.name}; with "
            "few validation images one image is more than half a point"
        )
        return Start(model, probe, "the probe (train_head)", info | {"head": "probe"})
    train, val = load_training_data(cfg)
    model = at_size(model, size).to(device)
    params = cfg.head.model_copy(update=meta.get("params") or {})  # a sweep's chosen settings
    refit = refit_head(model, train, val, params, cfg.seed, precision, progress=progress)
    log.info(
        "finetune: the probe was fit on %d px features (val accuracy %s) and does not fit the "
        "fine-tune's %d px features; its head was fit again on them in %.1f s: val accuracy %s",
        extracted, _fmt(probe), size, refit["feature_seconds"] + refit["head_seconds"],
        _fmt(refit["val_accuracy"]),
    )  # fmt: skip
    info |= {"head": f"refit at {size} px", "refit": refit}
    return Start(model.to("cpu"), refit["val_accuracy"], f"the head refit at {size} px", info)


def resolve_strategy(cfg: Config) -> StrategyChoice:
    """``finetune.strategy``, with ``auto`` decided by data size and the linear probe."""
    if cfg.finetune.strategy != "auto":
        return StrategyChoice(cfg.finetune.strategy, "set in params (finetune.strategy)")
    splits = read_manifest(cfg.paths.prepared)["splits"]
    _, meta = load_head(cfg.paths.head)
    return choose_strategy(
        splits["train"]["count"], splits.get("val", {}).get("count", 0), probe_accuracy(meta),
        cfg.finetune.auto_probe_good,
    )  # fmt: skip


def resolved_options(cfg: Config) -> Finetune:
    """The ``finetune`` section with ``auto`` replaced by its choice (the scratch budget)."""
    return cfg.finetune.model_copy(update={"strategy": resolve_strategy(cfg).strategy})


def start_fingerprints(cfg: Config) -> dict[str, Any]:
    """What the fine-tune starts from; evaluate refuses a model whose start has changed."""
    return {
        "prepared_fingerprint": read_manifest(cfg.paths.prepared)["fingerprint"],
        "head_sha256": sha256_file(cfg.paths.head / HEAD_WEIGHTS),
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
