"""The evaluation's pictures: every model's curves overlaid and, for image models, the data
(fastai's ``show_batch``), the most confused pairs with examples, and Grad-CAM overlays of the
top losses and of one correct example per class."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from thawline.config import Config
from thawline.data.store import PreparedStore
from thawline.evaluation import artifacts
from thawline.evaluation.cam import grad_cam, overlay
from thawline.evaluation.metrics import Evaluation
from thawline.features.assemble import build_model
from thawline.stage_table import trained_by
from thawline.stages.evaluate.outputs import HEAD_ONLY, ModelOutput
from thawline.training.records import read_record
from thawline.training.trained_model import load_trained

log = logging.getLogger(__name__)
SAMPLES_PER_CLASS = 2
CONFUSED_PAIRS, CONFUSED_EXAMPLES = 3, 4


def write_pictures(
    cfg: Config, store: PreparedStore, outputs: dict[str, ModelOutput], chosen: str,
    evaluation: Evaluation,
) -> dict[str, str]:  # fmt: skip
    """Write the pictures into ``cfg.paths.evaluation``; what they show, for summary.json."""
    out = cfg.paths.evaluation
    artifacts.clear_pictures(out)
    artifacts.write_strategy_curves(out, {n: o.history for n, o in outputs.items() if o.history})
    if store.modality != "image":
        return {}
    classes, output = store.classes, outputs[chosen]
    train = store.load("train")
    rows = _first_per_class(train.labels.numpy(), len(classes), SAMPLES_PER_CLASS)
    artifacts.write_picture(out, "samples", train.images[rows].numpy(),
                            [classes[train.labels[r]] for r in rows],
                            f"Training images ({len(train.labels):,} in all)",
                            cols=min(len(rows), 10), inches=1.3)  # fmt: skip
    images = store.load(cfg.evaluate.split).images
    _confused_examples(out, images.numpy(), output, evaluation, classes)
    if not cfg.evaluate.cams:
        return {}
    return _cams(cfg, images, output, evaluation, classes, chosen)


def _confused_examples(out: Path, images, output: ModelOutput, ev: Evaluation, classes) -> None:
    picked, titles = [], []
    index = {name: i for i, name in enumerate(classes)}
    for pair in ev.most_confused[:CONFUSED_PAIRS]:
        actual, predicted = index[pair["actual"]], index[pair["predicted"]]
        found = np.flatnonzero((output.labels == actual) & (ev.pred == predicted))
        found = found[np.argsort(-output.probs[found, predicted], kind="stable")]
        for row in found[:CONFUSED_EXAMPLES]:
            picked.append(row)
            titles.append(f"{pair['actual']} → {pair['predicted']}\n"
                          f"p={output.probs[row, predicted]:.2f}")  # fmt: skip
    if picked:
        artifacts.write_picture(out, "confused_examples", images[picked], titles,
                                "Most confused pairs: actual → predicted (the surest mistakes)",
                                colour="#b00020", cols=CONFUSED_EXAMPLES)  # fmt: skip


def _cams(cfg: Config, images: torch.Tensor, output: ModelOutput, ev: Evaluation, classes,
          chosen: str) -> dict[str, str]:  # fmt: skip
    model = _load(cfg, chosen)
    right = ev.pred == output.labels
    per_class = []  # the surest correct example of each class
    for c in range(len(classes)):
        rows = np.flatnonzero(right & (output.labels == c))
        if len(rows):
            per_class.append(rows[np.argmax(output.probs[rows, c])])
    sets = {"top_losses": ev.top_losses, "per_class": np.asarray(per_class, dtype=np.int64)}
    saved, layer = {}, ""
    for name, rows in sets.items():
        if len(rows) == 0:
            continue
        cams = grad_cam(model, images[rows], ev.pred[rows])  # the predictions evaluated
        layer = cams.layer
        pictures = [overlay(image, heat) for image, heat in zip(cams.images, cams.maps,
                                                                strict=True)]  # fmt: skip
        titles = [f"true: {classes[output.labels[r]]}\npred: {classes[ev.pred[r]]}" for r in rows]
        what = "top losses" if name == "top_losses" else "one correct example per class"
        artifacts.write_picture(cfg.paths.evaluation, f"cams_{name}", pictures, titles,
                                f"Grad-CAM ({layer}, predicted class): {what}",
                                colour="#b00020" if name == "top_losses" else "black")  # fmt: skip
        saved[name] = (cams.maps, rows, cams.targets)
    artifacts.write_cams(cfg.paths.evaluation, saved)
    log.info("evaluate: Grad-CAM on %s of %s for %d images", layer, chosen,
             sum(len(v[1]) for v in saved.values()))  # fmt: skip
    return {"cam_layer": layer}


def _load(cfg: Config, chosen: str):
    """The chosen model as a network (Grad-CAM needs its gradients)."""
    if chosen == HEAD_ONLY:
        return build_model(cfg)
    folder = getattr(cfg.paths, trained_by(chosen).output)
    return load_trained(folder, read_record(folder) or {})


def _first_per_class(labels: np.ndarray, classes: int, count: int) -> np.ndarray:
    """The first ``count`` rows of every class, class by class (a fixed, reproducible grid)."""
    rows = [np.flatnonzero(labels == c)[:count] for c in range(classes)]
    return np.concatenate(rows).astype(np.int64) if rows else np.zeros(0, np.int64)
