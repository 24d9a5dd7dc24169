"""The champion gate: does a challenger beat the champion on the same pinned split?

Two models scored on the same images are paired observations, so the gate uses McNemar's exact
test on the discordant pairs (images one model gets right and the other wrong) rather than
comparing two accuracies as if they were independent samples. Pure statistics: no files, no MLflow.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from scipy.stats import binomtest


@dataclass(frozen=True)
class Decision:
    """The gate's verdict and the numbers behind it.

    ``b`` counts images only the challenger gets right, ``c`` images only the champion gets right;
    ``p_value`` is McNemar's exact two-sided p-value, ``binomtest(b, b + c, 0.5)``.
    """

    promote: bool
    reason: str
    challenger_accuracy: float
    champion_accuracy: float | None = None
    difference: float | None = None
    b: int | None = None
    c: int | None = None
    p_value: float | None = None
    margin: float = 0.0
    alpha: float = 0.05

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def champion_gate(
    challenger_correct: np.ndarray,
    champion_correct: np.ndarray | None,
    margin: float,
    alpha: float,
    same_split: bool,
) -> Decision:
    """Decide whether the challenger replaces the champion.

    The challenger is promoted only when it beats the champion on the same pinned split by more
    than ``margin`` (absolute accuracy) and McNemar's exact test rejects equal error rates at
    level ``alpha``. Without a champion the challenger is promoted.

    Args:
        challenger_correct: Per-image correctness of the challenger (bool or 0/1), split order.
        champion_correct: The same for the champion, or None when there is no champion yet.
        margin: Required accuracy lead, in ``[0, 1)``.
        alpha: Significance level of the paired test, in ``(0, 1)``.
        same_split: Whether both were scored on the same split (equal split fingerprints).

    Returns:
        The decision with accuracies, difference, discordant counts, p-value and a reason.

    Raises:
        ValueError: Empty input, or arrays of different lengths that claim the same split.
    """
    ours = _as_bool(challenger_correct, "challenger_correct")
    accuracy = float(ours.mean())
    limits = {"margin": margin, "alpha": alpha}
    if champion_correct is None:
        reason = "no champion yet: the first model becomes champion"
        return Decision(True, reason, accuracy, **limits)
    theirs = _as_bool(champion_correct, "champion_correct")
    if not same_split:
        reason = (
            "not compared: the champion was evaluated on a different split (split fingerprints "
            "differ), so the accuracies are not paired; champion stays"
        )
        return Decision(False, reason, accuracy, float(theirs.mean()), **limits)
    if len(ours) != len(theirs):
        raise ValueError(
            f"same split, but {len(ours)} challenger and {len(theirs)} champion predictions"
        )
    b, c = int((ours & ~theirs).sum()), int((~ours & theirs).sum())  # the discordant pairs
    p_value = float(binomtest(b, b + c, 0.5).pvalue) if b + c else 1.0
    champion = float(theirs.mean())
    difference = accuracy - champion
    promote = difference > margin and p_value < alpha
    numbers = Decision(False, "", accuracy, champion, difference, b, c, p_value, **limits)
    return replace(numbers, promote=promote, reason=_reason(numbers))


def _reason(d: Decision) -> str:
    lead = f"accuracy {d.challenger_accuracy:.4f} vs {d.champion_accuracy:.4f}"
    test = f"McNemar b={d.b} c={d.c} p={d.p_value:.3g}"
    if d.difference <= d.margin:
        return f"champion stays: {lead}, a lead of {d.difference:+.4f} is not above {d.margin}"
    if d.p_value >= d.alpha:
        return f"champion stays: {lead}, but {test} is not below alpha={d.alpha}"
    return f"promoted: {lead} (lead {d.difference:+.4f} > {d.margin}), {test} < {d.alpha}"


def _as_bool(values: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values).reshape(-1)
    if array.size == 0:
        raise ValueError(f"{name}: no predictions")
    return array.astype(bool)
