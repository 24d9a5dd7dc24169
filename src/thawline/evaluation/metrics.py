"""Classification metrics from predicted probabilities: pure functions, no I/O.

Every function takes ``probs`` (float ``[N, C]``, rows sum to 1) and/or integer ``labels`` ``[N]``
as numpy arrays. :func:`evaluate_predictions` bundles them into one :class:`Evaluation` that the
``evaluate`` stage writes out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import f1_score, precision_recall_fscore_support, roc_auc_score, roc_curve

POSITIVE = 1  # two-class tasks: index 1 is the positive class (e.g. "pneumonia" vs "normal")


@dataclass
class Calibration:
    """Expected calibration error and the per-bin data of a reliability diagram.

    Bin ``b`` holds confidences in ``(edges[b], edges[b + 1]]`` (the first bin also holds 0).
    Empty bins have ``count`` 0 and NaN confidence and accuracy.
    """

    ece: float
    edges: np.ndarray  # [bins + 1]
    confidence: np.ndarray  # mean top-1 probability per bin
    accuracy: np.ndarray  # fraction correct per bin
    count: np.ndarray  # examples per bin


@dataclass
class Roc:
    """A two-class ROC curve (positive class = index 1)."""

    auc: float
    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray


@dataclass
class Evaluation:
    """Everything the ``evaluate`` stage reports about one model on one split."""

    pred: np.ndarray  # int64 [N]
    scalars: dict[str, float]  # accuracy, macro_f1, ece, loss, brier (+ two-class rates)
    confusion: np.ndarray  # [C, C], rows = actual, columns = predicted
    per_class: list[dict]
    most_confused: list[dict]
    calibration: Calibration
    roc: Roc | None = None
    top_losses: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def accuracy(labels: np.ndarray, pred: np.ndarray) -> float:
    """Fraction of predictions equal to the labels."""
    return float(np.mean(np.asarray(labels) == np.asarray(pred)))


def wilson_interval(correct: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of an accuracy: honest on small test sets, unlike +-2 SE."""
    from scipy.stats import binomtest

    if total == 0:
        return 0.0, 1.0
    ci = binomtest(correct, total).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def macro_f1(labels: np.ndarray, pred: np.ndarray, num_classes: int) -> float:
    """Unweighted mean of the per-class F1 scores over all ``num_classes`` classes."""
    return float(
        f1_score(labels, pred, labels=list(range(num_classes)), average="macro", zero_division=0)
    )


def log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (plain cross-entropy, no smoothing)."""
    p_true = np.asarray(probs, dtype=np.float64)[np.arange(len(labels)), labels]
    # Only an exact 0 is raised (to the smallest normal float64), so one confidently wrong
    # example cannot make the mean infinite; pass float64 probabilities to keep tiny ones exact.
    return float(-np.mean(np.log(np.maximum(p_true, np.finfo(np.float64).tiny))))


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    """Multi-class Brier score: mean over examples of the squared distance to the one-hot label
    (0 is perfect, 2 the worst)."""
    probs = np.asarray(probs, dtype=np.float64)
    onehot = np.zeros_like(probs)
    onehot[np.arange(len(labels)), labels] = 1.0
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def per_class_report(labels: np.ndarray, pred: np.ndarray, classes: list[str]) -> list[dict]:
    """Precision, recall, F1 and support of every class, in class-index order.

    A class never predicted gets precision 0 (sklearn's ``zero_division=0``), not an error.
    """
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, pred, labels=list(range(len(classes))), zero_division=0
    )
    return [
        {
            "class": name,
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(classes)
    ]


def confusion_matrix(labels: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``[C, C]``: row = actual class, column = predicted class."""
    flat = np.asarray(labels, dtype=np.int64) * num_classes + np.asarray(pred, dtype=np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def calibration(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> Calibration:
    """Expected calibration error over ``bins`` equal-width confidence bins (Guo et al., 2017).

    ECE is the mean over examples of ``|accuracy - confidence|`` of their bin, that is the sum
    over bins of ``count / N * |accuracy - confidence|``.
    """
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Right-closed bins: a confidence exactly on an edge belongs to the lower bin.
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, weights=confidence, minlength=bins) / count
        mean_acc = np.bincount(which, weights=correct, minlength=bins) / count
    gaps = np.where(count > 0, np.abs(mean_acc - mean_conf), 0.0)
    ece = float(np.sum(count * gaps) / max(len(labels), 1))
    return Calibration(ece, edges, mean_conf, mean_acc, count)


def roc(probs: np.ndarray, labels: np.ndarray) -> Roc | None:
    """The ROC curve and its AUC for a two-class task; None when a class is absent."""
    if len(np.unique(labels)) < 2:
        return None
    score = probs[:, POSITIVE]
    fpr, tpr, thresholds = roc_curve(labels, score, pos_label=POSITIVE)
    return Roc(float(roc_auc_score(labels, score)), fpr, tpr, thresholds)


def sensitivity_specificity(labels: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Two-class rates at the argmax decision, positive class = index 1.

    Sensitivity = TP / (TP + FN) (recall of positives); specificity = TN / (TN + FP). A rate
    whose denominator is zero (no positives, or no negatives) is left out rather than invented.
    """
    labels, pred = np.asarray(labels), np.asarray(pred)
    positives, negatives = labels == POSITIVE, labels != POSITIVE
    out = {}
    if positives.any():
        out["sensitivity"] = float(np.mean(pred[positives] == POSITIVE))
    if negatives.any():
        out["specificity"] = float(np.mean(pred[negatives] != POSITIVE))
    return out


def most_confused(matrix: np.ndarray, classes: list[str], top: int = 10) -> list[dict]:
    """The ``top`` largest off-diagonal cells, like fastai's ``most_confused``.

    Returns:
        Rows ``{"actual", "predicted", "count"}``, largest count first; ties keep class order.
        Cells with a count of 0 are never listed.
    """
    rows = [
        (int(matrix[a, p]), a, p)
        for a in range(len(classes))
        for p in range(len(classes))
        if a != p and matrix[a, p] > 0
    ]
    rows.sort(key=lambda r: (-r[0], r[1], r[2]))
    return [{"actual": classes[a], "predicted": classes[p], "count": n} for n, a, p in rows[:top]]


def top_losses(probs: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` examples with the highest loss (lowest true-class probability)."""
    p_true = probs[np.arange(len(labels)), labels]
    # A stable sort keeps equal losses in split order, so the gallery is reproducible.
    return np.argsort(p_true, kind="stable")[:k].astype(np.int64)


def evaluate_predictions(
    probs: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    *,
    bins: int = 15,
    confused_top: int = 10,
    gallery_size: int = 16,
) -> Evaluation:
    """All metrics of one model on one split.

    Args:
        probs: Predicted probabilities ``[N, C]``.
        labels: True class indices ``[N]``.
        classes: Class names, ``C`` of them.
        bins: Equal-width bins for the calibration error.
        confused_top: Rows of the most-confused table.
        gallery_size: How many top-loss indices to return.

    Returns:
        The :class:`Evaluation`; ``scalars`` holds only finite numbers.

    Raises:
        ValueError: Shapes of ``probs``, ``labels`` and ``classes`` disagree.
    """
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    _check_shapes(probs, labels, classes)
    pred = probs.argmax(axis=1).astype(np.int64)
    matrix = confusion_matrix(labels, pred, len(classes))
    calib = calibration(probs, labels, bins)
    scalars = {
        "accuracy": accuracy(labels, pred),
        "macro_f1": macro_f1(labels, pred, len(classes)),
        "ece": calib.ece,
        "loss": log_loss(probs, labels),
        "brier": brier(probs, labels),
    }
    curve = roc(probs, labels) if len(classes) == 2 else None
    if len(classes) == 2:  # the two-class scores the seeds' X-ray exercise asks for
        scalars |= sensitivity_specificity(labels, pred) | ({"roc_auc": curve.auc} if curve else {})
    return Evaluation(
        pred=pred,
        scalars=scalars,
        confusion=matrix,
        per_class=per_class_report(labels, pred, classes),
        most_confused=most_confused(matrix, classes, confused_top),
        calibration=calib,
        roc=curve,
        top_losses=top_losses(probs, labels, gallery_size),
    )


def _check_shapes(probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> None:
    if probs.ndim != 2 or probs.shape[1] != len(classes) or len(labels) != len(probs):
        raise ValueError(
            f"probs {probs.shape}, labels {labels.shape} and {len(classes)} classes disagree; "
            "expected probs [N, classes] and labels [N]"
        )
    if len(labels) == 0:
        raise ValueError("no examples to evaluate")
    if labels.min() < 0 or labels.max() >= len(classes):
        raise ValueError(
            f"labels must lie in 0..{len(classes) - 1}, got {labels.min()}..{labels.max()}"
        )
