"""Temperature scaling (Guo et al., 2017): one scalar T that divides the logits, fitted on
validation, so that probabilities mean what they say. Pure functions, no I/O.

Fitted by L-BFGS on the validation NLL over ``log T`` (so T stays positive), and kept only if
the NLL improves: a fit that does not help keeps T = 1 (AutoGluon once shipped T = -1242, which
flipped its ROC-AUC; autogluon PR #4396). Nor is a fit without a finite optimum kept: when every
validation example is already right (small folders: 9 of 9), the NLL keeps falling as T -> 0,
and "fitting" it would make every prediction claim probability 1. Nor is a gain that is within
the noise of a small validation split (under two standard errors of the per-example NLL change):
on 28 validation images of a small folder a fitted T = 0.67 lowered the validation NLL 0.56 ->
0.49 and raised the test NLL 0.69 -> 0.76 (the split that chose the model flatters it). Argmax
is invariant to T, so accuracy never changes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

LOG_T_LIMIT = math.log(100.0)  # T in [1/100, 100]: beyond that the fit is chasing a degenerate set
MIN_GAIN = 1e-4  # relative NLL improvement below which scaling is noise, and T stays 1


@dataclass(frozen=True)
class TemperatureFit:
    """A fitted temperature and what decided it (``asdict`` is the calibration.json record)."""

    temperature: float  # 1.0 unless kept
    kept: bool
    reason: str
    fitted: float  # what L-BFGS found, kept or not
    val_nll_before: float
    val_nll_after: float
    val_examples: int

    def as_dict(self) -> dict:
        return asdict(self)


def log_probs(probs: np.ndarray) -> torch.Tensor:
    """Logits up to a per-row constant (softmax does not see it): the log of probabilities."""
    return torch.log(torch.as_tensor(probs, dtype=torch.float64).clamp_min(1e-300))


def scale(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(logits / T)`` from ``softmax(logits)``: float64 ``[N, C]``."""
    if temperature == 1.0:
        return np.asarray(probs, dtype=np.float64)
    return torch.softmax(log_probs(probs) / temperature, dim=1).numpy()


def nll(probs: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` after scaling by ``temperature``."""
    return float(per_example_nll(probs, labels, temperature).mean())


def per_example_nll(probs: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Each example's negative log-likelihood after scaling by ``temperature``: float64 ``[N]``."""
    logits = log_probs(probs) / temperature
    return torch.nn.functional.cross_entropy(
        logits, torch.as_tensor(labels), reduction="none"
    ).numpy()


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> TemperatureFit:
    """Fit T on validation probabilities ``[N, C]`` and labels ``[N]``; keep it only if it helps.

    Raises:
        ValueError: No examples, or shapes that disagree.
    """
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    if probs.ndim != 2 or len(probs) != len(labels) or len(labels) == 0:
        raise ValueError(f"probs {probs.shape} and labels {labels.shape}: need [N, C] and [N]")
    examples = len(labels)
    if np.array_equal(probs.argmax(1), labels):
        reason = (f"all {examples} validation examples are already right, so the NLL falls without "
                  "end as T -> 0 and no temperature can be fitted: kept T = 1")  # fmt: skip
        before = nll(probs, labels)
        return TemperatureFit(1.0, False, reason, 1.0, before, before, examples)
    logits, target = log_probs(probs), torch.as_tensor(labels)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(
            logits / log_t.clamp(-LOG_T_LIMIT, LOG_T_LIMIT).exp(), target
        )
        loss.backward()
        return loss

    optimiser.step(closure)
    fitted = float(log_t.detach().clamp(-LOG_T_LIMIT, LOG_T_LIMIT).exp())
    losses = per_example_nll(probs, labels)
    scaled = per_example_nll(probs, labels, fitted) if math.isfinite(fitted) else losses + math.inf
    before, after = float(losses.mean()), float(scaled.mean())
    if not math.isfinite(after) or after > before * (1 - MIN_GAIN):
        reason = (f"T = {fitted:.3f} would not lower the validation NLL ({before:.4f} -> "
                  f"{after:.4f}, {examples} examples): kept T = 1")  # fmt: skip
        return TemperatureFit(1.0, False, reason, fitted, before, before, examples)
    noise = 2 * _standard_error(losses - scaled)
    if before - after <= noise:
        reason = (f"T = {fitted:.3f} lowers the validation NLL {before:.4f} -> {after:.4f}, "
                  f"within the noise of {examples} examples (2 standard errors: {noise:.4f}): "
                  "kept T = 1")  # fmt: skip
        return TemperatureFit(1.0, False, reason, fitted, before, before, examples)
    tone = "over-confident" if fitted > 1 else "under-confident"
    reason = (f"T = {fitted:.3f} ({tone} before) lowers the validation NLL {before:.4f} -> "
              f"{after:.4f} on {examples} examples")  # fmt: skip
    return TemperatureFit(fitted, True, reason, fitted, before, after, examples)


def _standard_error(values: np.ndarray) -> float:
    """Of the mean of ``values`` (infinite for fewer than two: nothing to judge by)."""
    return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.inf


def no_fit(reason: str) -> TemperatureFit:
    """T = 1 without a fit (no validation split, or nothing to calibrate)."""
    return TemperatureFit(1.0, False, reason, 1.0, math.nan, math.nan, 0)
