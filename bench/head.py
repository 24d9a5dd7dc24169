"""Head training: on cached features (thawline) against the seeds' way, in one run.

    .venv/bin/python bench/head.py [--per-class 100] [--epochs 5] [--size 128]

The seeds' way keeps the frozen backbone inside the training loop (PIL images through
transforms.Compose, DataLoader(batch_size=32), fp32, a new nn.Linear head, Adam at 1e-3), so
every epoch recomputes every feature. thawline extracts once and trains on the cache. Same
images, same epochs; prints time per epoch for both, the ratio, and both test accuracies.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from thawline.config import config_from_dict
from thawline.data.store import load_split
from thawline.features.cache import load_features
from thawline.models.backbone import create_backbone
from thawline.models.preprocess import Preprocess
from thawline.models.storage import load_head
from thawline.stages import extract, prepare, train_head


class PilImages(Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        image = Image.fromarray(self.images[i].permute(1, 2, 0).numpy())
        return self.transform(image), int(self.labels[i])


def seeds_way(cfg, epochs: int) -> tuple[float, float]:
    """Seconds per epoch and test accuracy of the frozen-backbone-in-the-loop recipe."""
    torch.manual_seed(cfg.seed)
    backbone = create_backbone(cfg.backbone)
    model = backbone.model
    for p in model.parameters():
        p.requires_grad = False
    model.classifier = nn.Linear(model.num_features, 10)  # the new head, trainable
    p = Preprocess.from_backbone(backbone, cfg.extract.image_size, cfg.extract.crop_pct)
    tf = transforms.Compose([
        transforms.Resize(int(p.size / p.crop_pct), interpolation=InterpolationMode.BICUBIC),
        transforms.CenterCrop(p.size),
        transforms.ToTensor(),
        transforms.Normalize(p.mean, p.std),
    ])  # fmt: skip
    train, test = (load_split(cfg.paths.prepared, s) for s in ("train", "test"))
    loader = DataLoader(PilImages(train.images, train.labels, tf), batch_size=32, shuffle=True)
    optimizer = torch.optim.Adam(model.classifier.parameters(), lr=1e-3)
    started = time.perf_counter()
    for _ in range(epochs):
        model.eval()  # frozen BatchNorm statistics, as a frozen backbone should have
        for images, labels in loader:
            loss = nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    per_epoch = (time.perf_counter() - started) / epochs
    correct = 0
    with torch.no_grad():
        for images, labels in DataLoader(PilImages(test.images, test.labels, tf), batch_size=64):
            correct += (model(images).argmax(1) == labels).sum().item()
    return per_epoch, correct / len(test.labels)


def cached_way(cfg) -> tuple[float, float, float]:
    """Extraction seconds, seconds per head epoch and test accuracy with thawline."""
    result = extract.run(cfg, progress=False)
    extract_seconds = result.metrics["images_computed"] / result.metrics["images_per_second"]
    fit = train_head.run(cfg, progress=False)
    head, _ = load_head(cfg.paths.head)
    x, y = load_features(cfg.paths.features, "test")
    with torch.no_grad():
        accuracy = (head(x).argmax(1) == y).float().mean().item()
    return extract_seconds, fit.metrics["seconds_per_epoch"], accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=100, help="images per class and split")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        cfg = config_from_dict({
            "paths": {"prepared": str(tmp / "p"), "features": str(tmp / "f"),
                      "head": str(tmp / "h")},
            "prepare": {"limit_per_class": args.per_class},
            "extract": {"image_size": args.size},
            # The seeds' recipe on both sides: plain linear head, Adam-like at a constant 1e-3,
            # batch 32, no smoothing, no dropout; only where the features come from differs.
            "head": {"epochs": args.epochs, "patience": 0, "batch_size": 32,
                     "schedule": "constant", "label_smoothing": 0.0, "dropout": 0.0,
                     "weight_decay": 0.0},
        })  # fmt: skip
        prepare.run(cfg, progress=False)
        extract_s, ours, our_acc = cached_way(cfg)
        theirs, their_acc = seeds_way(cfg, args.epochs)
    print(f"{args.epochs} epochs, {args.per_class} images per class and split, {args.size}px")
    print(f"seeds' way (backbone in the loop): {theirs:9.3f} s/epoch  test acc {their_acc:.4f}")
    print(f"thawline on cached features      : {ours:9.4f} s/epoch  test acc {our_acc:.4f}")
    print(f"  (one-off extraction {extract_s:.1f} s)")
    print(f"per-epoch speed-up: {theirs / ours:,.0f}x   (target >= 100x)")
    print(f"accuracy difference: {(our_acc - their_acc) * 100:+.2f} points (target within 0.5)")


if __name__ == "__main__":
    main()
