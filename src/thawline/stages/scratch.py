"""``scratch``: the from-scratch baseline, the seeds' exercise of transfer learning vs. none.

The same architecture as the backbone with random weights (``weights: none``) and a fresh head,
trained on the same images at the same input size, batch size, augmentation and schedule as
``finetune``, for the same number of epochs (``scratch.epochs`` overrides), with every layer
trainable at one LR (random layers have nothing to preserve, so no discriminative LRs). Writes
``paths.scratch`` in the layout of :mod:`thawline.stages.trained_model`; off unless
``scratch.enabled``.
"""

from __future__ import annotations

import torch

from thawline.config import Config, Finetune
from thawline.data.store import read_manifest
from thawline.models.backbone import create_backbone
from thawline.models.classifier import Classifier, build_classifier
from thawline.models.head import Head
from thawline.models.preprocess import Preprocess
from thawline.stages import StageResult
from thawline.stages.finetune import resolved_options
from thawline.stages.trained_model import skip, train_and_save
from thawline.training.fit_head import EpochCallback
from thawline.training.phases import resolve_phases
from thawline.training.unfreeze import layer_names


def run(
    cfg: Config, *, progress: bool = True, on_epoch_end: EpochCallback | None = None
) -> StageResult:
    """Train the randomly initialised model (when ``scratch.enabled``) and write its folder.

    Raises:
        NonFiniteLossError: The loss became NaN/inf (lower scratch.lr).
    """
    if not cfg.scratch.enabled:
        return skip(
            cfg.paths.scratch, {"strategy": "scratch", "reason": "scratch.enabled is false"}
        )
    model = random_model(cfg)
    epochs = cfg.scratch.epochs or budget_epochs(cfg, len(layer_names(model)))
    opts = Finetune(
        **cfg.finetune.model_dump()
        | {
            "strategy": "custom",
            "phases": [{"groups": -1, "epochs": epochs, "lr": cfg.scratch.lr}],
            "lr_decay": 1.0,
            "group_lrs": None,
            "freeze_bn": False,  # random BatchNorm statistics must be learnt
            # A baseline keeps its budget: nothing to protect in a random start.
            "rollback_tolerance": 1.0,
        }
    )
    reason = f"random init, every layer trainable, {epochs} epoch(s) at lr {cfg.scratch.lr}"
    record = {
        "strategy": "scratch",
        "reason": reason,
        "prepared_fingerprint": read_manifest(cfg.paths.prepared)["fingerprint"],
    }
    return train_and_save(
        cfg, model, opts, cfg.paths.scratch, record,
        checkpoints=cfg.paths.checkpoints / "scratch", on_epoch_end=on_epoch_end, progress=progress,
    )  # fmt: skip


def budget_epochs(cfg: Config, num_groups: int) -> int:
    """The fine-tune's epochs through the images (its resolved strategy's phases)."""
    train_size = read_manifest(cfg.paths.prepared)["splits"]["train"]["count"]
    phases = resolve_phases(resolved_options(cfg), num_groups, train_size)
    return sum(phase.epochs for phase in phases)


def random_model(cfg: Config) -> Classifier:
    """The backbone's architecture and a head, randomly initialised (seeded), at the fine-tune's
    input size with the backbone's normalisation."""
    torch.manual_seed(cfg.seed)
    backbone = create_backbone(cfg.backbone.model_copy(update={"weights": "none"}))
    size = cfg.finetune.image_size or cfg.extract.image_size
    preprocess = Preprocess.from_backbone(backbone, size, cfg.extract.crop_pct)
    prepared = read_manifest(cfg.paths.prepared)
    classes = list(prepared["classes"])
    head = Head(backbone.num_features, len(classes))
    return build_classifier(
        cfg.backbone.name, "none", [], preprocess, head, classes, int(prepared["image_size"])
    )
