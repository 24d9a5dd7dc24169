"""Temperature scaling: fitted on validation, kept only if it helps, never changes the argmax."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from thawline.evaluation.metrics import brier, calibration
from thawline.evaluation.temperature import fit_temperature, nll, scale


def _logit_set(true_temperature: float, n: int = 4000, classes: int = 5, seed: int = 0):
    """Labels drawn from softmax(z); the model reports softmax(z * true_temperature), so a
    temperature above 1 makes it over-confident and below 1 under-confident."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2.0, size=(n, classes))
    p_true = torch.softmax(torch.as_tensor(z), dim=1).numpy()
    labels = np.array([rng.choice(classes, p=row) for row in p_true])
    reported = torch.softmax(torch.as_tensor(z * true_temperature), dim=1).numpy()
    return reported, labels


@pytest.mark.parametrize("distortion", [3.0, 0.4], ids=["over-confident", "under-confident"])
def test_fit_recovers_the_temperature_lowers_ece_and_keeps_accuracy(distortion):
    val_probs, val_labels = _logit_set(distortion, seed=1)
    test_probs, test_labels = _logit_set(distortion, seed=2)
    fit = fit_temperature(val_probs, val_labels)
    assert fit.kept and fit.temperature == pytest.approx(distortion, rel=0.1)
    assert fit.val_nll_after < fit.val_nll_before
    after = scale(test_probs, fit.temperature)
    assert np.array_equal(after.argmax(1), test_probs.argmax(1))  # accuracy cannot change
    assert np.allclose(after.sum(1), 1.0)
    assert calibration(after, test_labels).ece < 0.5 * calibration(test_probs, test_labels).ece
    assert nll(after, test_labels) < nll(test_probs, test_labels)
    assert brier(after, test_labels) < brier(test_probs, test_labels)


def test_the_guard_keeps_t_1_when_scaling_would_not_help():
    probs, labels = _logit_set(1.0, seed=3)  # already calibrated: nothing to gain
    fit = fit_temperature(probs, labels)
    assert not fit.kept and fit.temperature == 1.0
    assert "kept T = 1" in fit.reason
    assert np.array_equal(scale(probs, fit.temperature), probs)


def test_a_degenerate_set_stays_within_bounds_and_finite():
    """One example wrong with probability ~1, the rest right: the fit stays within its bounds."""
    probs = np.eye(4)[np.arange(40) % 4] * (1 - 1e-9) + 1e-9 / 4
    labels = np.arange(40) % 4
    labels[0] = 1
    fit = fit_temperature(probs, labels)
    assert np.isfinite(fit.fitted) and 0.01 <= fit.fitted <= 100
    assert np.isfinite(fit.val_nll_after)


@pytest.mark.parametrize("confidence", [0.6, 0.999])
def test_a_validation_split_without_errors_keeps_t_1(confidence):
    """Every example right (9 of 9 in a small folder): the NLL falls without end as T -> 0, so
    no fit is kept; before this guard such a run kept T = 0.013 and claimed probability 1."""
    labels = np.arange(9) % 3
    probs = np.full((9, 3), (1 - confidence) / 2)
    probs[np.arange(9), labels] = confidence
    fit = fit_temperature(probs, labels)
    assert not fit.kept and fit.temperature == 1.0
    assert "all 9 validation examples are already right" in fit.reason
    assert fit.val_examples == 9 and np.isfinite(fit.val_nll_before)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        fit_temperature(np.zeros((3, 2)), np.zeros(4, dtype=int))


def test_a_gain_within_the_noise_of_a_small_validation_split_keeps_t_1():
    """30 examples of a mildly over-confident model: the fit lowers their NLL, but by less than
    two standard errors of the per-example change, so T stays 1; 4,000 of them keep it."""
    small, small_labels = _logit_set(1.5, n=30, seed=5)
    fit = fit_temperature(small, small_labels)
    assert nll(small, small_labels, fit.fitted) < fit.val_nll_before  # a fit that "helps"...
    assert not fit.kept and fit.temperature == 1.0 and "within the noise" in fit.reason
    large, large_labels = _logit_set(1.5, n=4000, seed=5)
    assert fit_temperature(large, large_labels).kept
