"""A small grid of heads (lr x weight decay x head type) trained from the same cached features."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch

from thawline.config import HeadParams
from thawline.training.fit_head import HeadFit, fit_head

CandidateCallback = Callable[[dict[str, Any], dict[str, float], list[dict[str, float]]], None]


def sweep_heads(
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    opts: HeadParams,
    seed: int,
    *,
    on_candidate: CandidateCallback | None = None,
) -> tuple[HeadFit, dict[str, Any], list[dict[str, Any]]]:
    """Train every grid point and return the best by validation accuracy.

    Returns:
        ``(best fit, its params, one row per candidate with params and validation metrics)``.
    """
    grid = opts.sweep
    rows: list[dict[str, Any]] = []
    best: tuple[HeadFit, dict[str, Any]] | None = None
    for kind, lr, decay in itertools.product(grid.type, grid.lr, grid.weight_decay):
        params = {"type": kind, "lr": lr, "weight_decay": decay}
        candidate = opts.model_copy(update=params)
        fit = fit_head(train, val, num_classes, candidate, seed)
        metrics = {k: v for k, v in fit.best.items() if k.startswith("val_")}
        metrics |= {"best_epoch": float(fit.best_epoch)}
        rows.append(params | metrics)  # the table in head.json: a function of the inputs only
        if on_candidate is not None:
            on_candidate(params, metrics | {"seconds": fit.seconds}, fit.history)
        if best is None or fit.best["val_accuracy"] > best[0].best["val_accuracy"]:
            best = (fit, params)
    assert best is not None  # the config guarantees a non-empty grid
    return best[0], best[1], rows
