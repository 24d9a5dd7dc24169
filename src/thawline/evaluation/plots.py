"""PNG plots for people: confusion matrix, reliability diagram, training curves, ROC, image grids.

Figures are built on matplotlib's Agg canvas directly (no pyplot), so plotting never touches a
display or pyplot's global state, and is safe in worker threads. Every file is written atomically.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from thawline.evaluation.metrics import Calibration, Roc
from thawline.files import atomic_path

DPI = 110


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")  # the temp name has no .png suffix to infer it from
    return path


def plot_confusion_matrix(matrix: np.ndarray, classes: list[str], path: Path) -> Path:
    """Counts in every cell, coloured by the row's share, so rare classes stay readable."""
    n = len(classes)
    side = max(4.5, 0.55 * n + 2.5)
    fig = _figure(side + 1, side)
    ax = fig.add_subplot()
    # Colour by recall (row share): raw counts would wash out classes with few examples.
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of actual class")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    total = int(matrix.sum())
    correct = int(np.trace(matrix))
    ax.set_title(f"Confusion matrix ({correct}/{total} correct)")
    size = 9 if n <= 12 else 7
    for a in range(n):
        for p in range(n):
            if matrix[a, p]:
                colour = "white" if share[a, p] > 0.5 else "black"
                ax.text(p, a, str(int(matrix[a, p])), ha="center", va="center",
                        color=colour, fontsize=size)  # fmt: skip
    return _save(fig, path)


def plot_reliability(calib: Calibration, path: Path, before: Calibration | None = None) -> Path:
    """Accuracy per confidence bin against the diagonal, with the bin counts underneath; with
    ``before`` (the model before temperature scaling), its bins as a line over the bars."""
    fig = _figure(5.5, 6)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    width = np.diff(calib.edges)
    left = calib.edges[:-1]
    filled = calib.count > 0
    acc = np.where(filled, calib.accuracy, 0.0)
    conf = np.where(filled, calib.confidence, 0.0)
    top.bar(left, acc, width=width, align="edge", color="#4c72b0", edgecolor="white",
            label="accuracy" if before is None else "accuracy (calibrated)")  # fmt: skip
    # Hatched outlines from accuracy to mean confidence: readable above and below the bars.
    top.bar(left[filled], (conf - acc)[filled], bottom=acc[filled], width=width[filled],
            align="edge", fill=False, hatch="//", edgecolor="#c44e52", linewidth=0.8,
            label="gap to mean confidence")  # fmt: skip
    top.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    title = f"Reliability diagram (ECE = {calib.ece:.4f})"
    if before is not None:
        shown = before.count > 0
        top.plot(before.confidence[shown], before.accuracy[shown], "o-", color="#dd8452",
                 markersize=4, label=f"before scaling (ECE {before.ece:.4f})")  # fmt: skip
        title = f"Reliability: ECE {before.ece:.4f} before, {calib.ece:.4f} after scaling"
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(title, fontsize=10)
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(left, calib.count, width=width, align="edge", color="#55a868", edgecolor="white")
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("confidence (top-1 probability)")
    bottom.set_ylabel("examples")
    return _save(fig, path)


def plot_training_curves(history: list[dict], path: Path) -> Path:
    """Loss and accuracy per epoch; an empty history gives a figure that says so."""
    fig = _figure(10, 4)
    loss_ax, acc_ax = fig.subplots(1, 2)
    if not history:
        for ax in (loss_ax, acc_ax):
            ax.set_axis_off()
        fig.suptitle("No training history was recorded for this model")
        return _save(fig, path)
    epochs = [row.get("epoch", i + 1) for i, row in enumerate(history)]
    for ax, kind in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        for key in _keys_ending(history, kind):
            values = [row.get(key, math.nan) for row in history]
            ax.plot(epochs, values, marker="o", markersize=3, label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel(kind)
        ax.set_title(kind.capitalize())
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no {kind} recorded", ha="center", transform=ax.transAxes)
    return _save(fig, path)


def _keys_ending(history: list[dict], suffix: str) -> list[str]:
    keys: dict[str, None] = {}
    for row in history:
        keys |= {k: None for k in row if k.endswith(suffix)}
    return list(keys)


def plot_roc(curve: Roc, path: Path, positive: str) -> Path:
    """The ROC curve of the positive class, with its AUC and the chance diagonal."""
    fig = _figure(5, 5)
    ax = fig.add_subplot()
    ax.plot(curve.fpr, curve.tpr, color="#4c72b0", lw=2, label=f"ROC (AUC = {curve.auc:.4f})")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title(f"ROC, positive class '{positive}'")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_top_losses(images: np.ndarray, titles: list[str], path: Path) -> Path:
    """A grid of uint8 images ``[K, 3, S, S]`` with their titles (true / predicted, p)."""
    return plot_grid(images, titles, path, "Top losses: true / predicted (p = predicted "
                     "probability), loss = -log p(true)", colour="#b00020", inches=2.3)  # fmt: skip


def plot_grid(
    images, titles: list[str], path: Path, title: str, colour: str = "black", cols: int = 0,
    inches: float = 2.1,
) -> Path:  # fmt: skip
    """uint8 images (``[3, S, S]`` or ``[S, S, 3]`` each) in a grid, a title over each, each
    ``inches`` wide."""
    count = len(images)
    cols = cols or min(count, max(1, math.ceil(math.sqrt(count))))
    rows = max(1, math.ceil(count / cols))
    fig = _figure(inches * cols, (inches + 0.3) * rows + 0.3)
    fig.suptitle(title)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, image, text in zip(axes, images, titles, strict=False):
        picture = np.asarray(image)
        if picture.ndim == 3 and picture.shape[0] == 3:
            picture = np.transpose(picture, (1, 2, 0))
        ax.imshow(picture, interpolation="nearest")
        ax.set_title(text, fontsize=8, color=colour)
    return _save(fig, path)


def plot_strategy_curves(histories: dict[str, list[dict]], path: Path) -> Path:
    """Validation accuracy and loss of every model on one pair of axes.

    The fine-tuned model starts from the trained head, so its epochs continue the head's (its
    epoch 0 is its start: the head, refit at the fine-tune's resolution); the scratch baseline
    starts at epoch 0. Validation figures exist for every epoch, the start included, so even a
    one-epoch fine-tune draws a line rather than a dot.
    """
    fig = _figure(10, 4)
    acc_ax, loss_ax = fig.subplots(1, 2)
    head_end = max((row.get("epoch", 0) for row in histories.get("head_only", [])), default=0)
    for name, history in histories.items():
        offset = head_end if name == "finetuned" else 0
        for ax, key in ((acc_ax, "val_accuracy"), (loss_ax, "val_loss")):
            points = [(row.get("epoch", i + 1) + offset, row[key])
                      for i, row in enumerate(history) if row.get(key) is not None]  # fmt: skip
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o", markersize=4, label=name)
    if head_end and "finetuned" in histories:
        for ax in (acc_ax, loss_ax):
            ax.axvline(head_end, color="grey", ls=":", lw=1)
            ax.text(head_end, 1.0, " thaw", transform=ax.get_xaxis_transform(), va="top",
                    fontsize=8, color="grey")  # fmt: skip
    for ax, what in ((acc_ax, "validation accuracy"), (loss_ax, "validation loss")):
        ax.set_xlabel("epoch (the fine-tune continues from the head)")
        ax.set_title(what.capitalize())
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def plot_lr_find(
    lrs: list[float], losses: list[float], marks: dict[str, float], path: Path
) -> Path:
    """fastai's ``plot_lr_find``: the smoothed loss against the LR (log scale, without the last
    five points), and a dot at each suggestion (``marks``: name -> LR)."""
    fig = _figure(6, 4)
    ax = fig.add_subplot()
    shown_lrs, shown = (lrs[:-5], losses[:-5]) if len(lrs) > 10 else (lrs, losses)
    ax.plot(shown_lrs, shown)
    for name, lr in marks.items():
        at = float(np.interp(np.log10(lr), np.log10(lrs), losses)) if lrs else 0.0
        ax.plot([lr], [at], "o", label=f"{name} {lr:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss (smoothed)")
    ax.set_title("LR range test")
    if marks:
        ax.legend(loc="best")
    return _save(fig, path)
