"""Feature extraction: thawline against the seeds' naive loop, on the same backbone and images.

    .venv/bin/python bench/extract.py [--per-class 200] [--size 128]

Prints images/s for (1) thawline's extract stage, (2) the naive baseline (PIL images through
transforms.Compose, DataLoader(batch_size=32), torch.no_grad, fp32, default memory format) and
(3) model-only throughput of thawline's fast path on ready tensors (the ceiling), then the ratios.
With --probe it also trains a logistic-regression probe on bf16 and fp32 features.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from thawline.config import config_from_dict
from thawline.data.store import load_split
from thawline.devices import resolve_precision
from thawline.features.cache import load_features
from thawline.features.extractor import FeatureExtractor, Preprocess
from thawline.models.backbone import create_backbone
from thawline.stages import extract, prepare

BICUBIC = InterpolationMode.BICUBIC


class PilImages(Dataset):
    """The seeds' dataset: one PIL image per item, transformed one by one."""

    def __init__(self, images: torch.Tensor, transform):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i].permute(1, 2, 0).numpy()))


def naive(cfg, images: torch.Tensor) -> float:
    backbone = create_backbone(cfg.backbone)
    model = backbone.model.eval()
    # As the seeds write it: drop the classifier, keep everything before it.
    feature_extractor = torch.nn.Sequential(*list(model.children())[:-1])
    p = Preprocess.from_backbone(backbone, cfg.extract.image_size, cfg.extract.crop_pct)
    tf = transforms.Compose(
        [
            transforms.Resize(int(p.size / p.crop_pct), interpolation=BICUBIC),
            transforms.CenterCrop(p.size),
            transforms.ToTensor(),
            transforms.Normalize(p.mean, p.std),
        ]
    )
    loader = DataLoader(PilImages(images, tf), batch_size=32)
    start = time.perf_counter()
    with torch.no_grad():
        for batch in loader:
            feature_extractor(batch)
    return len(images) / (time.perf_counter() - start)


def model_only(cfg, n: int) -> float:
    backbone = create_backbone(cfg.backbone)
    amp = resolve_precision(cfg.extract.precision, torch.device("cpu"), training=False).dtype
    preprocess = Preprocess.from_backbone(backbone, cfg.extract.image_size, cfg.extract.crop_pct)
    extractor = FeatureExtractor(backbone, [], preprocess, torch.device("cpu"), amp)
    x = torch.randn(cfg.extract.batch_size, 3, cfg.extract.image_size, cfg.extract.image_size)
    extractor.features(x)  # warm-up (and tracing)
    batches = max(1, n // len(x))
    start = time.perf_counter()
    for _ in range(batches):
        extractor.features(x)
    return batches * len(x) / (time.perf_counter() - start)


def probe(cfg_for, tmp: Path) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scores = {}
    for precision in ("bf16", "fp32"):
        cfg = cfg_for(tmp, precision, dtype="float32")
        extract.run(cfg, progress=False)
        xtr, ytr = load_features(cfg.paths.features, "train")
        xte, yte = load_features(cfg.paths.features, "test")
        scaler = StandardScaler().fit(xtr.float().numpy())
        clf = LogisticRegression(max_iter=2000, C=0.5)
        clf.fit(scaler.transform(xtr.float().numpy()), ytr.numpy())
        scores[precision] = float(clf.score(scaler.transform(xte.float().numpy()), yte.numpy()))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=200, help="images per class and split")
    parser.add_argument("--size", type=int, default=128, help="input resolution")
    parser.add_argument("--probe", action="store_true", help="also compare bf16 and fp32 features")
    args = parser.parse_args()
    torch.manual_seed(0)

    def cfg_for(tmp: Path, precision: str = "auto", dtype: str = "float16"):
        return config_from_dict(
            {
                "paths": {
                    "prepared": str(tmp / "prepared"),
                    "features": str(tmp / f"f-{precision}"),
                },
                "prepare": {"limit_per_class": args.per_class, "val_fraction": 0.0},
                "extract": {"image_size": args.size, "precision": precision, "dtype": dtype},
            }
        )

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        cfg = cfg_for(tmp)
        prepare.run(cfg, progress=False)
        images = load_split(cfg.paths.prepared, "train").images
        ours = extract.run(cfg, progress=False)
        total = ours.metrics["images_computed"]
        fast = ours.metrics["images_per_second"]
        slow = naive(cfg, images[: min(len(images), 1024)])
        ceiling = model_only(cfg, 4096)
        print(
            f"backbone {cfg.backbone.name} at {args.size}px, {int(total)} images, "
            f"{torch.get_num_threads()} threads"
        )
        print(f"thawline extract : {fast:8.1f} img/s")
        print(f"naive baseline   : {slow:8.1f} img/s")
        print(f"model only       : {ceiling:8.1f} img/s")
        print(f"speed-up vs naive: {fast / slow:8.2f}x   (target >= 3x)")
        print(f"end-to-end/model : {fast / ceiling:8.1%}   (target >= 80%)")
        if args.probe:
            scores = probe(cfg_for, tmp)
            loss = (scores["fp32"] - scores["bf16"]) * 100
            print(
                f"probe accuracy   : bf16 {scores['bf16']:.4f}  fp32 {scores['fp32']:.4f}  "
                f"(bf16 loses {max(loss, 0):.2f} points; limit 0.3)"
            )


if __name__ == "__main__":
    main()
