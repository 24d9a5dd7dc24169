"""Evaluation metrics against small cases computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from thawline.evaluation.metrics import (
    calibration,
    confusion_matrix,
    evaluate_predictions,
    log_loss,
    macro_f1,
    most_confused,
    per_class_report,
    roc,
    sensitivity_specificity,
    top_losses,
)


def two_class(p_positive: list[float]) -> np.ndarray:
    p = np.array(p_positive)
    return np.stack([1 - p, p], axis=1)


def test_perfectly_calibrated_predictions_have_zero_ece():
    # Confidence 0.75 everywhere and exactly 3 of 4 right: accuracy equals confidence.
    probs = np.array([[0.75, 0.25]] * 4)
    result = calibration(probs, np.array([0, 0, 0, 1]), bins=10)
    assert result.ece == pytest.approx(0.0, abs=1e-12)
    assert result.count.tolist() == [0, 0, 0, 0, 0, 0, 0, 4, 0, 0]
    # Confident and always right is also perfectly calibrated.
    assert calibration(np.eye(3), np.arange(3), bins=15).ece == pytest.approx(0.0)


def test_known_ece_and_bin_data():
    probs = np.array([[0.85, 0.15], [0.85, 0.15], [0.65, 0.35], [0.25, 0.75]])
    labels = np.array([0, 1, 0, 1])
    result = calibration(probs, labels, bins=10)
    # bin 8: conf .85, acc .5 (gap .35, 2 examples); bin 6: conf .65, acc 1 (gap .35);
    # bin 7: conf .75, acc 1 (gap .25). ECE = (2 * .35 + .35 + .25) / 4 = .325
    assert result.ece == pytest.approx(0.325)
    assert result.count.tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 2, 0]
    assert result.confidence[8] == pytest.approx(0.85)
    assert result.accuracy[8] == pytest.approx(0.5)
    assert result.accuracy[6] == pytest.approx(1.0)
    assert math.isnan(result.accuracy[0])  # empty bins have no accuracy
    assert result.edges[0] == 0.0 and result.edges[-1] == 1.0 and len(result.edges) == 11


def test_binary_sensitivity_specificity_and_auc_by_hand():
    labels = np.array([1, 1, 1, 0, 0, 0, 0])
    probs = two_class([0.9, 0.6, 0.3, 0.7, 0.2, 0.1, 0.4])
    pred = probs.argmax(axis=1)
    # positives predicted [1, 1, 0] -> 2/3; negatives predicted [1, 0, 0, 0] -> 3/4 right.
    rates = sensitivity_specificity(labels, pred)
    assert rates == pytest.approx({"sensitivity": 2 / 3, "specificity": 3 / 4})
    # Of 3 x 4 positive/negative pairs, the positive scores higher in 4 + 3 + 2 = 9.
    curve = roc(probs, labels)
    assert curve.auc == pytest.approx(9 / 12)
    assert (curve.fpr[0], curve.tpr[0]) == (0.0, 0.0) and (curve.fpr[-1], curve.tpr[-1]) == (1, 1)
    scalars = evaluate_predictions(probs, labels, ["normal", "pneumonia"]).scalars
    assert scalars["roc_auc"] == pytest.approx(0.75)
    assert scalars["sensitivity"] == pytest.approx(2 / 3)
    assert scalars["specificity"] == pytest.approx(0.75)


def test_binary_rates_without_positives_are_left_out():
    labels = np.array([0, 0, 0])
    probs = two_class([0.2, 0.7, 0.1])
    assert roc(probs, labels) is None
    scalars = evaluate_predictions(probs, labels, ["a", "b"]).scalars
    assert "sensitivity" not in scalars and "roc_auc" not in scalars
    assert scalars["specificity"] == pytest.approx(2 / 3)


def test_multiclass_has_no_binary_metrics():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
    scalars = evaluate_predictions(probs, np.array([0, 1, 0]), ["a", "b", "c"]).scalars
    assert set(scalars) == {"accuracy", "macro_f1", "ece", "loss", "brier"}
    assert scalars["accuracy"] == pytest.approx(2 / 3)
    # Brier: mean squared distance to the one-hot labels
    expected = np.mean([(0.3**2 + 0.2**2 + 0.1**2), (0.1**2 + 0.2**2 + 0.1**2),
                        (0.7**2 + 0.3**2 + 0.4**2)])  # fmt: skip
    assert scalars["brier"] == pytest.approx(expected)


def test_confusion_matrix_rows_are_actual_columns_predicted():
    matrix = confusion_matrix(np.array([0, 0, 1, 2]), np.array([1, 0, 1, 1]), 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]


def test_most_confused_orders_by_count_then_class():
    matrix = np.array([[5, 3, 1], [4, 2, 0], [0, 3, 6]])
    rows = most_confused(matrix, ["a", "b", "c"], top=10)
    assert [(r["actual"], r["predicted"], r["count"]) for r in rows] == [
        ("b", "a", 4),
        ("a", "b", 3),
        ("c", "b", 3),
        ("a", "c", 1),
    ]  # zero cells and the diagonal never appear
    assert len(most_confused(matrix, ["a", "b", "c"], top=2)) == 2


def test_macro_f1_and_per_class_by_hand():
    labels, pred = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])
    # class 0: P 1, R .5, F1 2/3; class 1: P 2/3, R 1, F1 .8
    assert macro_f1(labels, pred, 2) == pytest.approx((2 / 3 + 0.8) / 2)
    report = per_class_report(labels, pred, ["x", "y"])
    assert report[0] == pytest.approx(
        {"class": "x", "precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2}
    )
    assert report[1]["precision"] == pytest.approx(2 / 3) and report[1]["recall"] == 1.0
    # A class that never occurs nor is predicted counts as F1 0 in the macro mean.
    assert macro_f1(labels, pred, 3) == pytest.approx((2 / 3 + 0.8) / 3)


def test_log_loss_and_top_losses():
    probs = np.array([[0.5, 0.5], [0.25, 0.75], [0.9, 0.1], [0.6, 0.4]])
    labels = np.array([0, 1, 1, 0])
    expected = -(np.log(0.5) + np.log(0.75) + np.log(0.1) + np.log(0.6)) / 4
    assert log_loss(probs, labels) == pytest.approx(expected)
    assert top_losses(probs, labels, 3).tolist() == [2, 0, 3]  # p_true .1, .5, .6


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="disagree"):
        evaluate_predictions(np.ones((3, 2)) / 2, np.array([0, 1, 0]), ["a", "b", "c"])
    with pytest.raises(ValueError, match="labels must lie"):
        evaluate_predictions(np.ones((2, 2)) / 2, np.array([0, 2]), ["a", "b"])
