"""``finetune``: thaw the backbone under the trained head (linear probe, then fine-tune).

Starts from the model ``register`` would build (backbone + ``train_head``'s head + the feature
manifest's preprocessing). When the fine-tune runs at another input size than the features were
extracted at, the head is first fit again on features at that size (training/start.py). Trains
on the prepared images in the phases of ``finetune``, never ending worse than epoch 0 (the
starting model), and writes ``paths.finetune`` (layout in :mod:`thawline.training.trained_model`).
``strategy: auto`` is resolved here, once, from the data and the probe's validation accuracy,
and recorded with its budget in ``plan.json`` (the scratch baseline trains for it); a resolved
``head_only`` trains nothing: the head on cached features is then the model.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from thawline.config import Config, FinetuneParams
from thawline.data.store import PreparedStore
from thawline.devices import resolve_device
from thawline.evaluation.plots import plot_lr_find
from thawline.features.assemble import build_model
from thawline.features.cache import FeatureCache
from thawline.files import sha256_file
from thawline.models.storage import head_files, read_head_meta
from thawline.precision_choice import choose_precision
from thawline.stage_table import StageResult
from thawline.training.fit_head import EpochCallback
from thawline.training.phases import budget_epochs
from thawline.training.records import skip, write_plan
from thawline.training.start import Start, StartChecks, at_size, refit_head
from thawline.training.strategy import probe_accuracy, resolve_strategy
from thawline.training.trained_model import load_training_data, train_and_save
from thawline.training.unfreeze import layer_names

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
    opts = cfg.finetune.model_copy(update={"strategy": choice.strategy})
    train_size = PreparedStore(cfg.paths.prepared).count("train")
    if choice.strategy == "head_only":
        log.info("finetune: nothing to thaw, so finetune.image_size, phases and the learning "
                 "rates have no effect; the head from train_head is the model")  # fmt: skip
        write_plan(cfg.paths.finetune, choice.strategy, choice.reason,
                   budget_epochs(opts, 1, train_size))  # fmt: skip
        return skip(cfg.paths.finetune, record)
    start = starting_point(cfg, opts, progress)
    groups = len(layer_names(start.model))
    write_plan(cfg.paths.finetune, choice.strategy, choice.reason,
               budget_epochs(opts, groups, train_size))  # fmt: skip
    val = load_training_data(cfg)[1]
    checks = StartChecks(
        start, 0 if val is None else len(val[1]), len(start.model.classes), on_epoch_end
    )
    start.info["warnings"] = checks.findings  # filled in while training, saved in the record
    result = train_and_save(
        cfg, start.model, opts, cfg.paths.finetune, record | {"start": start.info},
        checkpoints=cfg.paths.checkpoints / "finetune", on_epoch_end=checks, progress=progress,
        stats={"stage": "finetune", "setup_seconds": start.seconds},
    )  # fmt: skip
    finds = result.info.pop("lr_finds", [])
    if result.outputs:  # rank 0, which wrote the folder
        plot_lr_finds(cfg.paths.finetune, finds)
    return result


def plot_lr_finds(folder: Path, finds: list[dict]) -> None:
    """``lr: auto``: one ``lr_find_phase<n>.png`` per phase's range test (none left over)."""
    for old in folder.glob("lr_find_phase*.png"):
        old.unlink()
    for found in finds:
        marks = {"valley (used)": found["lr"], "steep": found["steep"]}
        plot_lr_find(found["lrs"], found["losses"], marks,
                     folder / f"lr_find_phase{found['phase']}.png")  # fmt: skip


def starting_point(cfg: Config, opts: FinetuneParams, progress: bool) -> Start:
    """The probe's model at the fine-tune's input size, its head fit again when that differs
    from the extraction size, and the validation accuracy its epoch 0 should match."""
    model = build_model(cfg)
    meta = read_head_meta(cfg.paths.head)
    probe = probe_accuracy(meta)
    extracted = model.preprocess.size
    info: dict[str, Any] = {"probe_image_size": extracted, "probe_val_accuracy": probe}
    device = resolve_device(opts.device)
    size = opts.image_size or extracted
    if size != extracted:
        model = at_size(model, size)
    # The fine-tune's own choice (measured once per kind of CPU or GPU, then cached): the refit head
    # sees the features the fine-tune will start from.
    precision = choose_precision(
        opts.precision, device, model, batch=opts.batch_size // opts.nproc, training=True
    ).precision
    if size == extracted:
        cache = FeatureCache(cfg.paths.features).parts
        info["why_gap"] = (
            f"the probe was scored on cached features ({cache['precision']}, stored as "
            f"{cache['dtype']}) and the fine-tune runs the backbone in {precision.name}; with "
            "few validation images one image is more than half a point"
        )
        return Start(model, probe, "the probe (train_head)", info | {"head": "probe"})
    train, val = load_training_data(cfg)
    model = model.to(device)
    params = cfg.head.model_copy(update=meta.get("params") or {})  # a sweep's chosen settings
    refit, seconds = refit_head(model, train, val, params, cfg.seed, precision, progress=progress)
    log.info(
        "finetune: the probe was fit on %d px features (val accuracy %s) and does not fit the "
        "fine-tune's %d px features; its head was fit again on them in %.1f s: val accuracy %s",
        extracted, _fmt(probe), size, seconds,
        _fmt(refit["val_accuracy"]),
    )  # fmt: skip
    info |= {"head": f"refit at {size} px", "refit": refit}
    source = f"the head refit at {size} px"
    return Start(model.to("cpu"), refit["val_accuracy"], source, info, seconds=seconds)


def start_fingerprints(cfg: Config) -> dict[str, Any]:
    """What the fine-tune starts from; evaluate refuses a model whose start has changed."""
    return {
        "prepared_fingerprint": PreparedStore(cfg.paths.prepared).fingerprint,
        "head_sha256": sha256_file(head_files(cfg.paths.head).weights),
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
