"""The rivals bench/time_to_accuracy.py runs beside thawline, and the clock all runs share.

``naive`` is the tutorials' loop and ``fastai_run`` fastai 2.8's own recipe; that script's
docstring says how each is set up. Both train at ``SIZE`` px and score the test split after
every epoch on a :class:`Clock` that pauses while it scores.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from thawline.data.store import load_split
from thawline.models.backbone import create_backbone
from thawline.training.trained_model import load_training_data

SIZE = 64


class Clock:
    """Wall time of training only: paused while the test split is scored."""

    def __init__(self):
        self.started, self.paused = time.perf_counter(), 0.0
        self.points: list[tuple[float, float]] = []  # (training seconds, test accuracy)
        self.ema_points: list[tuple[float, float]] = []  # the same for EMA weights, if any
        self.kept: dict | None = None  # thawline: the weights the stage keeps, scored once
        # thawline with --tta: the same points scored with test-time augmentation (raw, EMA)
        self.tta_points: list[tuple[float, float]] = []
        self.ema_tta_points: list[tuple[float, float]] = []

    def score(self, accuracy_fn, ema: bool = False) -> None:
        """Score with ``accuracy_fn``: a test accuracy, or (plain, with TTA) ones."""
        if torch.cuda.is_available():  # the steps still queued on the GPU are training time
            torch.cuda.synchronize()
        now = time.perf_counter()
        accuracy, tta = accuracy_fn(), None
        if isinstance(accuracy, tuple):
            accuracy, tta = accuracy
        points = self.ema_points if ema else self.points
        seconds = now - self.started - self.paused
        points.append((seconds, accuracy))
        line = f"  {seconds:7.1f} s  test {accuracy:.4f}"
        if tta is not None:
            (self.ema_tta_points if ema else self.tta_points).append((seconds, tta))
            line += f", with TTA {tta:.4f}"
        self.paused += time.perf_counter() - now
        print(line + (" (EMA)" if ema else ""), flush=True)


def naive(cfg, test, epochs: int) -> Clock:
    """The tutorials' loop (see the module docstring)."""
    import torchvision.transforms.v2 as T

    backbone = create_backbone(cfg.backbone)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # as the tutorials do
    model = backbone.model
    model.reset_classifier(10)
    model.to(device)
    mean, std = backbone.data_config["mean"], backbone.data_config["std"]
    prep = T.Compose([T.Resize(SIZE, antialias=True), T.ToDtype(torch.float32, scale=True),
                      T.Normalize(mean, std)])  # fmt: skip
    (images, labels), _ = load_training_data(cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def accuracy() -> float:
        model.eval()
        with torch.no_grad():
            preds = torch.cat([model(prep(x.to(device))).argmax(1).cpu()
                               for x in test[0].split(256)])  # fmt: skip
        model.train()
        return (preds == test[1]).float().mean().item()

    clock = Clock()
    for _ in range(epochs):
        order = torch.randperm(len(labels))
        for start in range(0, len(order) - 63, 64):
            idx = order[start : start + 64]
            x, y = images[idx].to(device), labels[idx].to(device)
            loss = nn.functional.cross_entropy(model(prep(x)), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        clock.score(accuracy)
    return clock


def fastai_run(cfg, test, epochs: int) -> Clock:
    """fastai 2.8's vision_learner + lr_find + fine_tune (see the module docstring)."""
    from fastai.vision.all import (
        Callback,
        CategoryBlock,
        DataBlock,
        ImageBlock,
        IndexSplitter,
        Normalize,
        PILImage,
        Resize,
        accuracy,
        aug_transforms,
        vision_learner,
    )  # fmt: skip

    store = load_split(cfg.paths.prepared, "train")
    val = load_split(cfg.paths.prepared, "val")
    # One array, so that test_dl's items go through the same get_x (test rows come last).
    images = torch.cat([store.images, val.images, test[0]]).permute(0, 2, 3, 1).numpy()
    labels = torch.cat([store.labels, val.labels]).numpy()
    block = DataBlock(
        blocks=(ImageBlock, CategoryBlock), get_items=lambda _: list(range(len(labels))),
        get_x=lambda i: PILImage.create(images[i]), get_y=lambda i: int(labels[i]),
        splitter=IndexSplitter(list(range(len(store.labels), len(labels)))),
        item_tfms=Resize(SIZE), batch_tfms=aug_transforms(),
    )  # fmt: skip
    dls = block.dataloaders(None, bs=64)
    backbone = create_backbone(cfg.backbone)  # the packaged weights, as thawline loads them
    learn = vision_learner(dls, "tf_efficientnet_lite0", pretrained=False, normalize=False,
                           metrics=accuracy)  # fmt: skip
    missing = learn.model[0].model.load_state_dict(backbone.model.state_dict(), strict=False)
    assert not missing.missing_keys, missing.missing_keys
    dls.add_tfms([Normalize.from_stats(backbone.data_config["mean"],
                                       backbone.data_config["std"])], "after_batch")  # fmt: skip
    learn.freeze()  # what vision_learner does for pretrained weights
    test_dl = dls.test_dl(list(range(len(labels), len(images))))
    clock = Clock()

    def test_accuracy() -> float:
        learn.model.eval()
        with torch.no_grad():
            preds = torch.cat([learn.model(xb).argmax(1).cpu() for (xb,) in test_dl])
        learn.model.train()
        return (preds == test[1]).float().mean().item()

    class ScoreTest(Callback):
        order = 100  # after the Recorder

        def after_epoch(self):
            clock.score(test_accuracy)

    base_lr = learn.lr_find(show_plot=False).valley
    print(f"  fastai lr_find valley: {base_lr:.2e}")
    learn.fine_tune(epochs, base_lr, cbs=[ScoreTest()])
    return clock
