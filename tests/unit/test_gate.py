"""The champion gate: margin and McNemar's exact test on paired predictions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from thawline.evaluation.gate import champion_gate


def paired(both: int, only_challenger: int, only_champion: int, neither: int):
    """Correctness arrays with the given counts of agreement and discordant pairs."""
    challenger = [1] * both + [1] * only_challenger + [0] * only_champion + [0] * neither
    champion = [1] * both + [0] * only_challenger + [1] * only_champion + [0] * neither
    return np.array(challenger, dtype=np.uint8), np.array(champion, dtype=np.uint8)


def test_first_model_is_promoted():
    decision = champion_gate(np.array([1, 0, 1, 1]), None, margin=0.0, alpha=0.05, same_split=True)
    assert decision.promote and decision.challenger_accuracy == 0.75
    assert decision.champion_accuracy is None and "first model" in decision.reason


def test_clear_win_is_promoted_with_the_exact_mcnemar_numbers():
    ours, theirs = paired(both=60, only_challenger=25, only_champion=5, neither=10)
    decision = champion_gate(ours, theirs, margin=0.01, alpha=0.05, same_split=True)
    assert decision.promote
    assert (decision.b, decision.c) == (25, 5)
    assert decision.challenger_accuracy == pytest.approx(0.85)
    assert decision.champion_accuracy == pytest.approx(0.65)
    assert decision.difference == pytest.approx(0.20)
    assert decision.p_value == pytest.approx(binomtest(25, 30, 0.5).pvalue)
    assert decision.reason.startswith("promoted")


def test_small_lead_without_significance_keeps_the_champion():
    ours, theirs = paired(both=80, only_challenger=6, only_champion=4, neither=10)
    decision = champion_gate(ours, theirs, margin=0.0, alpha=0.05, same_split=True)
    assert not decision.promote and decision.difference == pytest.approx(0.02)
    assert decision.p_value > 0.05 and "alpha" in decision.reason


def test_significant_lead_below_the_margin_keeps_the_champion():
    ours, theirs = paired(both=500, only_challenger=40, only_champion=10, neither=450)
    decision = champion_gate(ours, theirs, margin=0.05, alpha=0.05, same_split=True)
    assert decision.p_value < 0.001 and decision.difference == pytest.approx(0.03)
    assert not decision.promote and "not above 0.05" in decision.reason


def test_worse_or_equal_challenger_is_not_promoted():
    ours, theirs = paired(both=50, only_challenger=2, only_champion=30, neither=18)
    assert not champion_gate(ours, theirs, 0.0, 0.05, same_split=True).promote
    same = champion_gate(theirs, theirs, 0.0, 0.05, same_split=True)
    assert not same.promote and (same.b, same.c, same.p_value) == (0, 0, 1.0)


def test_different_split_is_never_promoted():
    ours, theirs = paired(both=10, only_challenger=80, only_champion=0, neither=10)
    decision = champion_gate(ours, theirs[:50], 0.0, 0.05, same_split=False)
    assert not decision.promote and "different split" in decision.reason
    assert decision.p_value is None and decision.b is None


def test_same_split_of_different_lengths_is_an_error():
    with pytest.raises(ValueError, match="same split"):
        champion_gate(np.ones(10), np.ones(9), 0.0, 0.05, same_split=True)
    with pytest.raises(ValueError, match="no predictions"):
        champion_gate(np.array([]), None, 0.0, 0.05, same_split=True)


def test_decision_is_json_ready():
    ours, theirs = paired(both=5, only_challenger=5, only_champion=0, neither=0)
    record = champion_gate(ours, theirs, 0.0, 0.05, True).as_dict()
    assert set(record) >= {"promote", "reason", "b", "c", "p_value", "margin", "alpha"}
    assert all(isinstance(v, (bool, int, float, str, type(None))) for v in record.values())
