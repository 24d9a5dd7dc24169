"""The evaluation outputs on disk: their names, layout, writers and readers.

``paths.evaluation`` holds, for the model ``evaluate`` chose::

    metrics.json              flat scalars for ``dvc metrics``: accuracy, macro_f1, ece, loss,
                              brier (after temperature scaling), temperature and
                              uncalibrated_{ece,loss,brier} (+ roc_auc, sensitivity,
                              specificity for two classes), every model's <model>_accuracy,
                              examples and the Wilson 95% interval accuracy_ci_low/high;
                              written last (write_metrics)
    summary.json              model, why it was chosen, split + fingerprint, metrics, history
    calibration.json          the temperature fitted on val, kept or not, and why
    per_class.json            precision, recall, F1 and support per class
    confusion_matrix.json     classes and counts [actual][predicted]
    most_confused.json        the largest off-diagonal confusion cells
    predictions.safetensors   labels, pred, correct, probs + split fingerprint (the champion gate)
    plots/predictions.csv     actual,predicted class names (DVC's confusion template)
    plots/calibration.csv     reliability bins: confidence, accuracy, count
    plots/history.csv         the model's training history, one row per epoch
    plots/roc.csv             two classes only: fpr, tpr
    confusion_matrix.png  reliability.png  curves.png  gallery.png  roc.png (two classes)
    strategy_curves.png       every model's validation accuracy and training loss, overlaid
    samples.png  confused_examples.png  cams_top_losses.png  cams_per_class.png
                              images: training samples per class, examples of the most confused
                              pairs, Grad-CAM overlays of the top losses and of one correct
                              example per class
    cams.safetensors          the Grad-CAM maps behind those overlays (<set>.maps [K, S, S],
                              <set>.rows: their rows in the split, <set>.targets: the class)
    compare/<model>/          metrics.json and summary.json of every evaluated model

and ``paths.registration`` the register stage's decision. This module alone knows these names;
the evaluate and register stages, the report and the flows' summaries write and read through it.
Nothing here is a run statistic: evaluating the same models gives the same files.
"""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from thawline.evaluation.metrics import Calibration, Evaluation
from thawline.evaluation.plots import (
    plot_confusion_matrix,
    plot_grid,
    plot_reliability,
    plot_roc,
    plot_strategy_curves,
    plot_top_losses,
    plot_training_curves,
)
from thawline.evaluation.predictions import PREDICTIONS, save_predictions
from thawline.files import atomic_path, read_json, remove_stale_temps, write_json

METRICS, SUMMARY, COMPARE, PLOTS = "metrics.json", "summary.json", "compare", "plots"
CALIBRATION = "calibration.json"
TABLES = ("per_class", "most_confused", "gallery")  # gallery.json: a text model's top losses
FIGURES = ("confusion_matrix", "reliability", "curves", "roc", "gallery")
# Pictures of the data and the model: image models only, but strategy_curves (every model).
PICTURES = ("strategy_curves", "samples", "confused_examples", "cams_top_losses",
            "cams_per_class")  # fmt: skip
CAMS = "cams.safetensors"
__all__ = ["COMPARE", "METRICS", "PREDICTIONS", "SUMMARY", "write_evaluation", "write_metrics"]


def begin(folder: Path) -> None:
    """Make ``folder`` ready for a new evaluation: until ``metrics.json`` is written again, the
    folder holds no complete evaluation."""
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(folder)
    (folder / METRICS).unlink(missing_ok=True)


def write_evaluation(
    folder: Path,
    evaluation: Evaluation,
    scored: tuple[np.ndarray, np.ndarray],
    summary: dict[str, Any],
    history: list[dict],
    gallery_images: np.ndarray | None,
) -> None:
    """Every file of the chosen model's evaluation but ``metrics.json`` (:func:`write_metrics`,
    last; see :func:`begin`).

    Args:
        scored: The split's labels ``[N]`` and the model's probabilities ``[N, C]``.
        summary: Must hold ``model``, ``split``, ``split_fingerprint``, ``classes`` and
            ``details.weights_sha256``: the predictions file the champion gate pairs names them.
        history: The model's training history (``plots/history.csv``, ``curves.png``).
        gallery_images: The split's images for the top-loss gallery (None: no gallery).
    """
    labels, probs = scored
    classes = summary["classes"]
    meta = {k: summary[k] for k in ("split", "split_fingerprint", "model")}
    meta["weights_sha256"] = summary["details"]["weights_sha256"]
    save_predictions(folder / PREDICTIONS, labels, evaluation.pred, probs, meta)
    write_json(folder / "per_class.json", evaluation.per_class)
    write_json(folder / "confusion_matrix.json",
               {"classes": classes, "matrix": evaluation.confusion.tolist()})  # fmt: skip
    write_json(folder / "most_confused.json", evaluation.most_confused)
    _write_plot_data(folder / PLOTS, evaluation, labels, history, classes)
    _write_pngs(folder, evaluation, scored, history, classes, gallery_images)
    write_json(folder / SUMMARY, summary)


def write_metrics(folder: Path, metrics: dict[str, float]) -> None:
    """``metrics.json``, the file DVC shows: written after every other file of the evaluation."""
    write_json(folder / METRICS, metrics)


def write_comparison(folder: Path, rows: dict[str, tuple[dict, dict]]) -> None:
    """``compare/<model>/{metrics,summary}.json`` for every evaluated model, and no others."""
    compare = folder / COMPARE
    shutil.rmtree(compare, ignore_errors=True)  # a model that is no longer trained has no row
    for name, (metrics, summary) in rows.items():
        write_json(compare / name / SUMMARY, summary)
        write_json(compare / name / METRICS, metrics)


def write_calibration(folder: Path, fit: dict, after: Calibration, before: Calibration | None):
    """``calibration.json`` (the temperature, whether it was kept and why) and, when it was
    kept, the reliability diagram redrawn with the model before scaling beside it."""
    write_json(Path(folder) / CALIBRATION, fit)
    if before is not None:
        plot_reliability(after, Path(folder) / "reliability.png", before=before)


def read_calibration(folder: Path) -> dict[str, Any]:
    """The chosen model's temperature record (``{}`` when none was written)."""
    return _read(Path(folder) / CALIBRATION)


def clear_pictures(folder: Path) -> None:
    """Remove the pictures of an earlier evaluation: a picture that no longer applies (a text
    model, CAMs switched off) must not stay behind."""
    for name in PICTURES:
        figure_path(folder, name).unlink(missing_ok=True)
    (Path(folder) / CAMS).unlink(missing_ok=True)


def write_picture(folder: Path, name: str, images, titles: list[str], title: str, **style):
    """One of ``PICTURES`` as a grid of images with their titles."""
    if name not in PICTURES:
        raise ValueError(f"no picture '{name}'; pictures: {PICTURES}")
    plot_grid(images, titles, figure_path(folder, name), title, **style)


def write_strategy_curves(folder: Path, histories: dict[str, list[dict]]) -> None:
    plot_strategy_curves(histories, figure_path(folder, "strategy_curves"))


def write_cams(folder: Path, sets: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]):
    """``cams.safetensors``: per set (``top_losses``, ``per_class``) its maps, rows, targets."""
    tensors = {}
    for name, (maps, rows, targets) in sets.items():
        tensors |= {f"{name}.maps": torch.from_numpy(maps).half(),
                    f"{name}.rows": torch.from_numpy(rows).long(),
                    f"{name}.targets": torch.from_numpy(targets).long()}  # fmt: skip
    with atomic_path(Path(folder) / CAMS) as tmp:
        save_file(tensors, str(tmp))


def read_cams(folder: Path) -> dict[str, torch.Tensor]:
    """The maps :func:`write_cams` wrote (``{}`` when there are none)."""
    path = Path(folder) / CAMS
    return load_file(str(path)) if path.is_file() else {}


def has_evaluation(folder: Path) -> bool:
    return (Path(folder) / METRICS).is_file()


def read_metrics(folder: Path) -> dict[str, float]:
    """The chosen model's ``metrics.json`` (``{}`` when there is no evaluation)."""
    return _read(Path(folder) / METRICS)


def read_summary(folder: Path) -> dict[str, Any]:
    return _read(Path(folder) / SUMMARY)


def comparison_folder(folder: Path, model: str) -> Path:
    """Where ``evaluate`` scores ``model``: ``compare/<model>/`` under the evaluation folder."""
    return Path(folder) / COMPARE / model


def compared_models(folder: Path) -> list[str]:
    """The models and baselines scored in ``compare/``, by name."""
    compare = Path(folder) / COMPARE
    return sorted(p.name for p in compare.iterdir() if p.is_dir()) if compare.is_dir() else []


def read_scored(folder: Path) -> tuple[dict, dict] | None:
    """``(metrics, summary)`` of a scored folder (a comparison folder, or the evaluation folder
    itself for the chosen model), or None when nothing was scored there."""
    if not (Path(folder) / METRICS).is_file():
        return None
    return read_json(Path(folder) / METRICS), _read(Path(folder) / SUMMARY)


def read_table(folder: Path, name: str) -> Any:
    """One of the chosen model's tables: ``per_class`` or ``most_confused`` (None if absent)."""
    if name not in TABLES:
        raise ValueError(f"no evaluation table '{name}'; tables: {TABLES}")
    path = Path(folder) / f"{name}.json"
    return read_json(path) if path.is_file() else None


def predictions_path(folder: Path) -> Path:
    return Path(folder) / PREDICTIONS


def figure_path(folder: Path, name: str) -> Path:
    """The PNG of figure ``name`` (one of ``FIGURES``), which may not exist (roc: two classes)."""
    return Path(folder) / f"{name}.png"


def write_registration(path: Path, record: dict[str, Any]) -> None:
    write_json(path, record)


def read_registration(path: Path) -> dict[str, Any]:
    """The register stage's decision (``{}`` before any registration)."""
    return _read(Path(path))


def _read(path: Path) -> dict[str, Any]:
    try:
        return read_json(path)
    except (OSError, ValueError):
        return {}


def _write_plot_data(folder: Path, ev: Evaluation, labels, history: list[dict], classes):
    """CSV files for ``dvc plots``; a file that does not apply to this run is removed."""
    pairs = [[classes[a], classes[p]] for a, p in zip(labels, ev.pred, strict=True)]
    _write_csv(folder / "predictions.csv", ["actual", "predicted"], pairs)
    calib = ev.calibration
    _write_csv(
        folder / "calibration.csv",
        ["bin", "lower", "upper", "confidence", "accuracy", "count"],
        [
            [b, calib.edges[b], calib.edges[b + 1], calib.confidence[b], calib.accuracy[b], n]
            for b, n in enumerate(calib.count.tolist())
            if n > 0  # an empty bin has no accuracy to plot
        ],
    )
    keys = list(dict.fromkeys(["epoch", *(k for row in history for k in row)]))
    _write_csv(folder / "history.csv", keys, [[row.get(k, "") for k in keys] for row in history])
    if ev.roc is None:
        (folder / "roc.csv").unlink(missing_ok=True)
    else:
        points = zip(ev.roc.fpr, ev.roc.tpr, strict=True)
        _write_csv(folder / "roc.csv", ["fpr", "tpr"], [list(p) for p in points])


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([[_cell(v) for v in row] for row in rows])
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue())


def _cell(value: Any) -> Any:
    if isinstance(value, float | np.floating):
        return f"{float(value):.6g}"
    return value.item() if isinstance(value, np.generic) else value


def _write_pngs(out: Path, ev: Evaluation, scored, history, classes, images) -> None:
    labels, probs = scored
    plot_confusion_matrix(ev.confusion, classes, out / "confusion_matrix.png")
    plot_reliability(ev.calibration, out / "reliability.png")
    plot_training_curves(history, out / "curves.png")
    if ev.roc is None:
        (out / "roc.png").unlink(missing_ok=True)
    else:
        plot_roc(ev.roc, out / "roc.png", positive=classes[1])
    if len(ev.top_losses) == 0 or images is None:
        (out / "gallery.png").unlink(missing_ok=True)
        return
    if isinstance(images, list):  # documents: the top losses as text, not a picture
        write_json(out / "gallery.json", [
            {"true": classes[labels[i]], "pred": classes[ev.pred[i]],
             "p": round(float(probs[i, ev.pred[i]]), 4), "text": images[i][:600]}
            for i in ev.top_losses
        ])  # fmt: skip
        return
    titles = [
        f"true: {classes[labels[i]]}\npred: {classes[ev.pred[i]]} (p={probs[i, ev.pred[i]]:.2f})"
        f"\nloss {-np.log(max(probs[i, labels[i]], 1e-300)):.2f}"
        for i in ev.top_losses
    ]
    plot_top_losses(images[ev.top_losses], titles, out / "gallery.png")
