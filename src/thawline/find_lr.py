"""``thawline lr-find``: fastai's LR range test for the head, on the cached features.

It trains a throw-away head for at most ``--steps`` steps with the LR growing from ``--start`` to
``--end`` (fastai's defaults: 1e-7 to 10, 100 steps), prints fastai's two suggestions and writes
the curve to ``paths.stats``/lr_find_head.png. ``head.lr: auto`` runs the same test inside
``train_head`` and uses the valley.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from thawline.config import Config
from thawline.errors import BAD_INPUT
from thawline.training.lr_find import END, START, STEPS

PLOT = "lr_find_head.png"


def add_lr_find_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``thawline lr-find``."""
    parser.add_argument("--start", type=float, default=START, help=f"first LR (default {START:g})")
    parser.add_argument("--end", type=float, default=END, help=f"last LR (default {END:g})")
    parser.add_argument("--steps", type=int, default=STEPS,
                        help=f"optimizer steps at most (default {STEPS})")  # fmt: skip
    return parser


def main_lr_find(args: argparse.Namespace, cfg: Config) -> int:
    """Run the test on ``paths.features``' train split; print the suggestions and the plot."""
    if not 0 < args.start < args.end or args.steps < 10:
        got = f"--start {args.start:g} --end {args.end:g} --steps {args.steps}"
        print(f"thawline lr-find: need 0 < --start < --end and --steps >= 10, got {got}",
              file=sys.stderr)  # fmt: skip
        return BAD_INPUT
    from thawline.evaluation.plots import plot_lr_find  # torch and matplotlib: not for --help
    from thawline.features.cache import FeatureCache
    from thawline.training.lr_find import find_head_lr

    cache = FeatureCache(cfg.paths.features)
    started = time.perf_counter()
    found = find_head_lr(cache.load("train"), len(cache.classes), cfg.head, cfg.seed,
                         args.start, args.end, args.steps)  # fmt: skip
    seconds = time.perf_counter() - started
    marks = {"valley": found.valley, "steep": found.steep}
    path = plot_lr_find(found.lrs, found.losses, marks, Path(cfg.paths.stats) / PLOT)
    print(f"valley {found.valley:.2e}  (fastai's default; head.lr: auto uses it)")
    print(f"steep  {found.steep:.2e}")
    print(f"thawline: {len(found.lrs)} steps in {seconds:.1f}s, {found.stopped}; plot: {path}",
          file=sys.stderr)  # fmt: skip
    return 0
