"""Is the seeds' rule of thumb true? head_only, gradual, full and auto on small folders, in one run.

    .venv/bin/python bench/strategies.py [--sizes 200 1000 2000 10000] [--stored 28 32]
                                         [--val 500] [--test 5000] [--json out.json]
                                         [--strategies head_only full] [--set key=value ...]

For each training-set size, a Fashion-MNIST image folder (PNG, ``train/ val/ test/`` of class
folders; a stratified training subset fixed by seed, the same val and test images for every
size) goes through the real stages with the shipped params.yaml defaults: ``prepare`` (stored at
28 px, the native size, and again upscaled to 32 px), ``extract``, ``train_head``, then
``finetune`` with each strategy and ``evaluate``, whose choice between the probe and the
fine-tuned model (by validation accuracy) is what ``register`` would take. ``auto`` is resolved
by the stage's own rule and reported with the run of the strategy it picks (the same seed and
inputs give the same run). Prints one row per (stored size, training images, strategy): val and
test accuracy of the fine-tuned model, the probe's test accuracy, evaluate's choice with its test
accuracy and Wilson 95% interval, and wall time (extraction and head included for head_only).
``--set`` overrides params.yaml for every run (``-S`` of ``dvc exp run``), for example to study a
fine-tune option on the same folders; ``--strategies`` runs some of them.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.stats import binomtest

from thawline.config import load_config
from thawline.data.image_sources import DEBIAN_FASHION_MNIST, read_idx
from thawline.files import read_json
from thawline.stages import evaluate, extract, finetune, prepare, train_head
from thawline.stages.finetune import resolve_strategy

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
           "bag", "boot"]  # fmt: skip
TRAINED = ("gradual", "full")


def stratified(labels: np.ndarray, pool: np.ndarray, count: int, rng) -> np.ndarray:
    """``count`` indices of ``pool``, the same number from each class."""
    per_class = count // len(CLASSES)
    picked = [rng.permutation(pool[labels[pool] == c])[:per_class] for c in range(len(CLASSES))]
    return np.sort(np.concatenate(picked))


def write_split(root: Path, images: np.ndarray, labels: np.ndarray) -> None:
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / CLASSES[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:05d}.png")


def make_folder(root: Path, train_size: int, val_size: int, test_size: int) -> Path:
    """A Fashion-MNIST folder; val and test do not depend on ``train_size`` (seed 0)."""
    x = read_idx(DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz")
    y = read_idx(DEBIAN_FASHION_MNIST / "train-labels-idx1-ubyte.gz")
    xt = read_idx(DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz")
    yt = read_idx(DEBIAN_FASHION_MNIST / "t10k-labels-idx1-ubyte.gz")
    val = stratified(y, np.arange(len(y)), val_size, np.random.default_rng(0))
    rest = np.setdiff1d(np.arange(len(y)), val)
    train = stratified(y, rest, train_size, np.random.default_rng(1))
    test = stratified(yt, np.arange(len(yt)), test_size, np.random.default_rng(2))
    for split, (images, labels) in {"train": (x[train], y[train]), "val": (x[val], y[val]),
                                    "test": (xt[test], yt[test])}.items():  # fmt: skip
        write_split(root / split, images, labels)
    return root


def wilson(accuracy: float, count: int) -> tuple[float, float]:
    interval = binomtest(round(accuracy * count), count).proportion_ci(method="wilson")
    return interval.low, interval.high


def run_size(
    folder: Path, work: Path, stored: int | None, strategies: list[str], changes: list[str]
) -> list[dict]:
    """``strategies`` on one folder at one stored size; a row each."""
    overrides = [
        "data.source=imagefolder", f"data.root={folder}", "tracking.enabled=false",
        "scratch.enabled=false", f"prepare.image_size={'null' if stored is None else stored}",
        *(f"paths.{name}={work / name}" for name in ("prepared", "features", "head",
                                                      "checkpoints", "evaluation")),
        *changes,
    ]  # fmt: skip
    cfg = load_config(REPO / "params.yaml", overrides)
    started = time.perf_counter()
    prepare.run(cfg, progress=False)
    extract.run(cfg, progress=False)
    train_head.run(cfg, progress=False)
    upstream = time.perf_counter() - started
    rows, auto = [], resolve_strategy(cfg).strategy
    for strategy in strategies:
        tuned = cfg.model_copy(update={
            "finetune": cfg.finetune.model_copy(update={"strategy": strategy}),
            "paths": cfg.paths.model_copy(update={"finetune": work / f"finetune-{strategy}"}),
        })  # fmt: skip
        started = time.perf_counter()
        finetune.run(tuned, progress=False)
        seconds = time.perf_counter() - started + upstream
        evaluate.run(tuned, progress=False)
        rows.append(row(tuned, strategy, seconds))
    if auto in strategies:
        picked = next(r for r in rows if r["strategy"] == auto)
        rows.append({**picked, "strategy": f"auto ({auto})"})
    return rows


def row(cfg, strategy: str, seconds: float) -> dict:
    folder = cfg.paths.evaluation
    summary = read_json(folder / "summary.json")
    models = [p for p in (folder / "compare").iterdir()]
    compare = {p.name: read_json(p / "metrics.json") for p in models}
    vals = {p.name: read_json(p / "summary.json")["val_accuracy"] for p in models}
    record = read_json(cfg.paths.finetune / "record.json")
    count = read_json(cfg.paths.prepared / "manifest.json")["splits"]["test"]["count"]
    chosen = compare[summary["model"]]["accuracy"]
    tuned = compare.get("finetuned", {})
    return {
        "strategy": strategy,
        "train_images": read_json(cfg.paths.prepared / "manifest.json")["splits"]["train"]["count"],
        "val": vals.get("finetuned", vals["head_only"]),  # the probe's, when nothing was tuned
        "test_finetuned": tuned.get("accuracy"),
        "test_probe": compare["head_only"]["accuracy"],
        "chosen": summary["model"],
        "test_chosen": chosen,
        "wilson": wilson(chosen, count),
        "epochs": record.get("epochs", 0),
        "rollbacks": len(record.get("rollbacks") or []),
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 1000, 2000, 10000])
    parser.add_argument("--stored", type=int, nargs="+", default=[28, 32])
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--test", type=int, default=5000)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--strategies", nargs="+", default=["head_only", *TRAINED],
                        choices=["head_only", *TRAINED])  # fmt: skip
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="params.yaml overrides for every run, as -S")  # fmt: skip
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    rows = []
    print("stored | train | strategy | epochs | rollbacks | val | test fine-tuned | test probe | "
          "evaluate's choice: test [Wilson 95%] | wall s")  # fmt: skip
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        for size in args.sizes:
            folder = make_folder(tmp / f"folder-{size}", size, args.val, args.test)
            for stored in args.stored:
                work = tmp / f"work-{size}-{stored}"
                stored_size = None if stored == 28 else stored
                for r in run_size(folder, work, stored_size, args.strategies, args.set):
                    r["stored"] = stored
                    rows.append(r)
                    print(format_row(r), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


def format_row(r: dict) -> str:
    def pct(value):
        return "-" if value is None else f"{value:.4f}"

    low, high = r["wilson"]
    return (f"{r['stored']} | {r['train_images']} | {r['strategy']} | {r['epochs']} | "
            f"{r['rollbacks']} | {pct(r['val'])} | {pct(r['test_finetuned'])} | "
            f"{pct(r['test_probe'])} | {r['chosen']}: {r['test_chosen']:.4f} "
            f"[{low:.4f}, {high:.4f}] | {r['seconds']:.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
