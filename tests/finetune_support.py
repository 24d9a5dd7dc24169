"""A tiny fine-tune for tests: Lite0 at random init on 96 Fashion-MNIST images at 32 px.

Shared by the fine-tuning reliability tests (resume, kills, NaN) and by the subprocess that
those tests SIGKILL, which imports this module.
"""

from __future__ import annotations

from pathlib import Path

import torch

from thawline.config import FinetuneParams, config_from_dict
from thawline.data.store import load_split
from thawline.models.backbone import create_backbone
from thawline.models.classifier import Classifier
from thawline.models.head import Head
from thawline.models.preprocess import PooledFeatures, Preprocess
from thawline.training.thaw_loop import fine_tune

OPTS = {
    "strategy": "custom",
    "phases": [{"groups": 1, "epochs": 1, "lr": 3e-3}, {"groups": -1, "epochs": 1, "lr": 1e-3}],
    "batch_size": 32,
    "precision": "fp32",
    "device": "cpu",
    "deterministic": True,
    "keep_checkpoints": 3,
}


class Stop(Exception):
    """Raised by a callback: the run dies after a checkpoint, as a killed one would."""


def tiny_data(prepared: Path):
    """96 training and 48 validation images of the prepared store."""
    train, val = load_split(prepared, "train"), load_split(prepared, "val")
    return (train.images[:96], train.labels[:96]), (val.images[:48], val.labels[:48])


def tiny_model() -> Classifier:
    """Lite0 (random init, so no weights to load) at 32 px with a linear head."""
    torch.manual_seed(1)
    backbone = create_backbone(config_from_dict({"backbone": {"weights": "none"}}).backbone)
    preprocess = Preprocess.from_backbone(backbone, 32, 1.0)
    spec = {"classes": [str(i) for i in range(10)], "image_size": 28}
    return Classifier(PooledFeatures(backbone, []), Head(1280, 10), preprocess, spec)


def run(data, folder: Path, stop_after: int | None = None, on_epoch_end=None, **changes):
    """Fine-tune ``tiny_model`` with OPTS (plus ``changes``); ``stop_after=k`` dies after epoch
    k's checkpoint."""

    def callback(epoch, metrics):
        if on_epoch_end is not None:
            on_epoch_end(epoch, metrics)
        if epoch == stop_after:
            raise Stop

    opts = FinetuneParams(**(OPTS | changes))
    return fine_tune(tiny_model(), *data, opts, 7, checkpoint_dir=folder, on_epoch_end=callback)


def series(folder: Path) -> Path:
    """The one checkpoint series (plan) under a checkpoint folder."""
    (found,) = [p for p in folder.iterdir() if p.is_dir()]
    return found


def comparable(history):
    return [{k: v for k, v in h.items() if k != "images_per_second"} for h in history]


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
