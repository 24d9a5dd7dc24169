"""``train_head``: fit the classifier head on the cached features; the backbone never runs.

Writes ``paths.head``: ``head.safetensors`` (weights + feature standardisation) and ``head.json``
(spec, history, chosen params, sweep table, the feature fingerprint it was trained on; with
``head.lr: auto`` the LR range test and ``lr_find.png``), and its wall time to ``paths.stats``
(thawline.run_stats).
"""

from __future__ import annotations

import logging

from thawline.config import Config, HeadParams
from thawline.evaluation.plots import plot_lr_find
from thawline.features.cache import CacheError, FeatureCache
from thawline.models.storage import save_head
from thawline.run_stats import write_stats
from thawline.stage_table import StageResult, training_metrics
from thawline.training.fit_head import EpochCallback, fit_head
from thawline.training.lr_find import LRFinding, find_head_lr
from thawline.training.sweep import CandidateCallback, sweep_heads

log = logging.getLogger(__name__)
LR_FIND_PLOT = "lr_find.png"  # with head.lr: auto, beside head.json


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
    found: LRFinding | None = None
    if cfg.head.sweep.enabled:
        if val is None:
            raise CacheError("head.sweep needs a validation split; set prepare.val_fraction > 0")
        fit, chosen, candidates = sweep_heads(
            train, val, len(classes), cfg.head, cfg.seed, on_candidate=on_candidate
        )
        log.info("sweep: best of %d candidates is %s", len(candidates), chosen)
    else:
        opts, found = resolved_lr(cfg, train, len(classes))
        fit = fit_head(
            train, val, len(classes), opts, cfg.seed,
            on_epoch_end=on_epoch_end, progress=progress,
        )  # fmt: skip
        chosen = {"type": opts.type, "lr": opts.lr, "weight_decay": opts.weight_decay}
        candidates = []
    epochs = len(fit.history)
    extra = {}
    (cfg.paths.head / LR_FIND_PLOT).unlink(missing_ok=True)  # an earlier lr: auto run's
    if found is not None:
        extra["lr_find"] = found.as_dict()
        marks = {"valley (used)": found.valley, "steep": found.steep}
        plot_lr_find(found.lrs, found.losses, marks, cfg.paths.head / LR_FIND_PLOT)
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
            **extra,
        },
    )  # no wall time in head.json: an identical head must leave DVC's hash unchanged
    write_stats(cfg.paths.stats, "train_head", {"seconds": round(fit.seconds, 3)})
    metrics = training_metrics(fit.best, fit.best_epoch, epochs, fit.seconds)
    if "lr_find" in extra:
        metrics["lr_found"] = float(chosen["lr"])
    return StageResult(outputs={"head": cfg.paths.head}, metrics=metrics, info={"params": chosen})


def resolved_lr(cfg: Config, train, num_classes: int) -> tuple[HeadParams, LRFinding | None]:
    """``cfg.head`` with a number for ``lr``: the range test's valley when it is ``auto``."""
    if cfg.head.lr != "auto":
        return cfg.head, None
    found = find_head_lr(train, num_classes, cfg.head, cfg.seed)
    log.info("train_head: lr auto: %.3g (fastai's valley; steep %.3g; %s)",
             found.valley, found.steep, found.stopped)  # fmt: skip
    return cfg.head.model_copy(update={"lr": found.valley}), found
