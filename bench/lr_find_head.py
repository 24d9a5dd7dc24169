"""``head.lr: auto`` against the fixed default, on one project's feature cache, in one run.

    .venv/bin/python bench/lr_find_head.py [-p params.yaml] [--rows 1000 ...]

For the whole cache and for class-balanced subsets of the training features (the small folders
users bring), it trains the head three times with the same seed, epochs and schedule: once at the
fixed ``head.lr`` of params.yaml (the baseline), once at the range test's valley (what
``head.lr: auto`` uses) and once at its steep point. Prints validation and test accuracy of
each, the LRs found and the seconds the range test took.
"""

from __future__ import annotations

import argparse
import time

import torch

from thawline.config import load_config
from thawline.features.cache import FeatureCache
from thawline.training.fit_head import evaluate_head, fit_head
from thawline.training.lr_find import find_head_lr


def subset(train: tuple[torch.Tensor, torch.Tensor], rows: int | None, seed: int):
    """``rows`` training rows drawn evenly from every class (all of them for None)."""
    if rows is None:
        return train
    generator = torch.Generator().manual_seed(seed)
    classes = int(train[1].max()) + 1
    picked = []
    for c in range(classes):
        where = torch.nonzero(train[1] == c).flatten()
        picked.append(where[torch.randperm(len(where), generator=generator)[: rows // classes]])
    index = torch.cat(picked).sort().values
    return train[0][index], train[1][index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-p", "--params", default="params.yaml")
    parser.add_argument("--rows", type=int, nargs="*", default=[1000, 5000],
                        help="training subsets to try besides the whole cache")  # fmt: skip
    args = parser.parse_args()
    cfg = load_config(args.params)
    if cfg.head.lr == "auto":
        raise SystemExit("set head.lr to the fixed baseline in params.yaml (it is 'auto')")
    cache = FeatureCache(cfg.paths.features)
    whole, val, test = cache.load("train"), cache.load("val"), cache.load("test")
    classes = len(cache.classes)
    print(f"{'train rows':>10}  {'lr':>9}  {'val acc':>7}  {'test acc':>8}  note")
    for rows in [None, *args.rows]:
        train = subset(whole, rows, cfg.seed)
        started = time.perf_counter()
        found = find_head_lr(train, classes, cfg.head, cfg.seed)
        seconds = time.perf_counter() - started
        for lr, note in ((cfg.head.lr, "fixed (params.yaml)"),
                         (found.valley, f"auto: valley, range test {seconds:.1f}s"),
                         (found.steep, "steep (fastai's other rule)")):  # fmt: skip
            fit = fit_head(train, val, classes, cfg.head.model_copy(update={"lr": lr}), cfg.seed)
            scored = evaluate_head(fit.head, *test)["val_accuracy"]  # the same metric, on test
            print(f"{len(train[1]):>10}  {lr:>9.2e}  {fit.best['val_accuracy']:>7.4f}  "
                  f"{scored:>8.4f}  {note}")  # fmt: skip


if __name__ == "__main__":
    main()
