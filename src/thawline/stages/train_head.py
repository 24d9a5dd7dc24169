"""``train_head``: fit the classifier head on the cached features; the backbone never runs.

Writes ``paths.head``: ``head.safetensors`` (weights + feature standardisation) and ``head.json``
(spec, history, chosen params, sweep table, the feature fingerprint it was trained on), and its
wall time to ``paths.stats`` (thawline.run_stats).
"""

from __future__ import annotations

import logging

from thawline.config import Config
from thawline.features.cache import CacheError, FeatureCache
from thawline.models.storage import save_head
from thawline.run_stats import write_stats
from thawline.stage_table import StageResult, training_metrics
from thawline.training.fit_head import EpochCallback, fit_head
from thawline.training.sweep import CandidateCallback, sweep_heads

log = logging.getLogger(__name__)


def run(
    cfg: Config,
    *,
    progress: bool = True,
    on_epoch_end: EpochCallback | None = None,
    on_candidate: CandidateCallback | None = None,
) -> StageResult:
    """Train the head (or a sweep of heads) on ``paths.features`` and save the best.

    Raises:
        CacheError: No feature cache, or a shard whose sha256 does not match.
        NonFiniteLossError: The loss became NaN/inf; nothing is written.
    """
    cache = FeatureCache(cfg.paths.features)
    train = cache.load("train")
    val = cache.load("val") if "val" in cache.splits else None
    classes = cache.classes
    if cfg.head.sweep.enabled:
        if val is None:
            raise CacheError("head.sweep needs a validation split; set prepare.val_fraction > 0")
        fit, chosen, candidates = sweep_heads(
            train, val, len(classes), cfg.head, cfg.seed, on_candidate=on_candidate
        )
        log.info("sweep: best of %d candidates is %s", len(candidates), chosen)
    else:
        fit = fit_head(
            train, val, len(classes), cfg.head, cfg.seed,
            on_epoch_end=on_epoch_end, progress=progress,
        )  # fmt: skip
        chosen = {"type": cfg.head.type, "lr": cfg.head.lr, "weight_decay": cfg.head.weight_decay}
        candidates = []
    epochs = len(fit.history)
    save_head(
        fit.head,
        cfg.paths.head,
        {
            "classes": classes,
            "feature_fingerprint": cache.fingerprint,
            "params": chosen,
            "best_epoch": fit.best_epoch,
            "history": fit.history,
            "sweep": candidates,
        },
    )  # no wall time in head.json: an identical head must leave DVC's hash unchanged
    write_stats(cfg.paths.stats, "train_head", {"seconds": round(fit.seconds, 3)})
    metrics = training_metrics(fit.best, fit.best_epoch, epochs, fit.seconds)
    return StageResult(outputs={"head": cfg.paths.head}, metrics=metrics, info={"params": chosen})
