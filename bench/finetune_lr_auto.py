"""``finetune.base_lr: auto`` against the fixed default, on small real folders, in one run.

    .venv/bin/python bench/finetune_lr_auto.py [--per-class 20 200] [--strategy gradual]

For each folder size (``--per-class`` images of each of the 10 classes from Fashion-MNIST's
train file, 10 % carved off as val, and as many from its test file) it runs prepare -> extract
-> train_head once, then the fine-tune twice from the same probe with the same seed: at the
fixed ``base_lr`` of the default params (1e-3) and with ``base_lr: auto`` (a range test per
phase). Prints the probe's and each fine-tune's validation and test accuracy, the rollbacks the
never-worse guard made, the LRs found and the seconds. The issue's case: 200 images, strategy
gradual forced.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from thawline.config import config_from_dict, load_config
from thawline.data.store import load_split
from thawline.files import read_json
from thawline.models.storage import load_classifier
from thawline.stages import extract, finetune, prepare, train_head
from thawline.training.validate import metrics_from_sums, validation_sums


def project(base: Path, per_class: int, strategy: str):
    raw = load_config("params.yaml").model_dump(mode="json")
    names = ("prepared", "features", "head", "finetune", "checkpoints", "stats")
    raw["paths"] |= {name: str(base / name) for name in names}
    raw["prepare"] |= {"limit_per_class": per_class}
    raw["finetune"] |= {"strategy": strategy}
    raw["tracking"] |= {"enabled": False}
    return config_from_dict(raw)


def test_accuracy(cfg, folder: Path) -> float:
    test = load_split(cfg.paths.prepared, "test")
    model = load_classifier(folder)
    return metrics_from_sums(validation_sums(model, test.inputs, test.labels))["val_accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-class", type=int, nargs="+", default=[20, 200])
    parser.add_argument("--strategy", default="gradual", choices=["gradual", "full"])
    args = parser.parse_args()
    print(f"{'images':>6}  {'base_lr':>7}  {'val':>6}  {'test':>6}  {'s':>5}  rollbacks; LRs found")
    for per_class in args.per_class:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = project(Path(tmp), per_class, args.strategy)
            for stage in (prepare, extract, train_head):
                stage.run(cfg, progress=False)
            head = read_json(cfg.paths.head / "head.json")
            probe = next(r for r in head["history"] if r["epoch"] == head["best_epoch"])
            images = 10 * per_class
            print(f"{images:>6}  {'probe':>7}  {probe['val_accuracy']:.4f}  {'':>6}")
            for lr in (cfg.finetune.base_lr, "auto"):
                run = cfg.model_copy(update={"finetune": cfg.finetune.model_copy(
                    update={"base_lr": lr})})  # fmt: skip
                started = time.perf_counter()
                result = finetune.run(run, progress=False)
                seconds = time.perf_counter() - started
                record = read_json(cfg.paths.finetune / "record.json")
                test = test_accuracy(cfg, result.outputs["model"])
                rollbacks = ", ".join(f"phase {r['phase']} {r['action']}"
                                      for r in record["rollbacks"]) or "none"  # fmt: skip
                found = ", ".join(f"{f['lr']:.2g}" for f in record["lr_finds"]) or "-"
                print(f"{images:>6}  {lr!s:>7}  {record['best']['val_accuracy']:.4f}  "
                      f"{test:.4f}  {seconds:>5.0f}  {rollbacks}; {found}")  # fmt: skip


if __name__ == "__main__":
    main()
