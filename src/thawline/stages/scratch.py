"""``scratch``: the from-scratch baseline, the seeds' exercise of transfer learning vs. none.

The same architecture as the backbone with random weights (``weights: none``) and a fresh head,
trained on the same images at the same input size, batch size, augmentation and schedule as
``finetune``, for the same number of epochs (the budget the finetune stage recorded in its
``plan.json``; ``scratch.epochs`` overrides), with every layer
trainable at one LR (random layers have nothing to preserve, so no discriminative LRs). Writes
``paths.scratch`` in the layout of :mod:`thawline.training.trained_model`; off unless
``scratch.enabled``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from thawline.config import Config, FinetuneParams
from thawline.stage_table import StageResult
from thawline.training.records import read_plan, skip

if TYPE_CHECKING:
    from thawline.models.classifier import Classifier
    from thawline.training.fit_head import EpochCallback

# torch, timm and the training loop are imported where they are used: a disabled baseline
# (the make run default on small machines) records that and exits in under a second.


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
    from thawline.data.store import PreparedStore
    from thawline.training.trained_model import train_and_save

    model = random_model(cfg)
    epochs = cfg.scratch.epochs or read_plan(cfg.paths.finetune)["budget_epochs"]
    opts = FinetuneParams(
        **cfg.finetune.model_dump()
        | {
            "strategy": "custom",
            "phases": [{"groups": -1, "epochs": epochs, "lr": cfg.scratch.lr}],
            "lr_decay": 1.0,
            "group_lrs": None,
            "freeze_bn": False,  # random BatchNorm statistics must be learnt
            "thaw": "layers",  # adapters on random weights would learn nothing useful
            # A baseline keeps its budget: nothing to protect in a random start.
            "rollback_tolerance": 1.0,
        }
    )
    reason = f"random init, every layer trainable, {epochs} epoch(s) at lr {cfg.scratch.lr}"
    record = {
        "strategy": "scratch",
        "reason": reason,
        "prepared_fingerprint": PreparedStore(cfg.paths.prepared).fingerprint,
    }
    return train_and_save(
        cfg, model, opts, cfg.paths.scratch, record,
        checkpoints=cfg.paths.checkpoints / "scratch", on_epoch_end=on_epoch_end, progress=progress,
        stats={"stage": "scratch"},
    )  # fmt: skip


def random_model(cfg: Config) -> Classifier:
    """The backbone's architecture and a head, randomly initialised (seeded), at the fine-tune's
    input size with the backbone's normalisation."""
    import torch

    from thawline.data.store import PreparedStore
    from thawline.models.backbone import create_backbone
    from thawline.models.classifier import build_classifier
    from thawline.models.head import Head
    from thawline.models.preprocess import preprocess_for

    torch.manual_seed(cfg.seed)
    backbone = create_backbone(cfg.backbone.model_copy(update={"weights": "none"}))
    size = cfg.finetune.image_size or cfg.extract.image_size
    store = PreparedStore(cfg.paths.prepared)
    preprocess = preprocess_for(backbone, size, cfg.extract.crop_pct, store.tokens)
    head = Head(backbone.num_features, len(store.classes))
    return build_classifier(
        cfg.backbone.name, "none", [], preprocess, head, store.classes, store.image_size,
        cfg.backbone.pooling,
    )  # fmt: skip
