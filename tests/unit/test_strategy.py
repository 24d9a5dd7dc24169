"""``finetune.strategy: auto`` follows the evidence of bench/strategies.py (fine-tune everything
unless thawing cannot be checked or cannot pay); ``precision: auto`` on a CPU trains small inputs
in fp32."""

from __future__ import annotations

import pytest

from thawline.training.strategy import choose_strategy, probe_accuracy, should_escalate


@pytest.mark.parametrize(
    ("size", "val", "probe", "strategy", "words"),
    [
        (99, 10, 0.3, "head_only", "< 100"),
        (200, 0, 0.5, "head_only", "no validation split"),
        (200, 20, 0.76, "full", "probe 0.7600"),
        (1_000, 100, 0.99, "head_only", "already reaches 0.9900"),
        (1_000, 100, 0.989, "full", "discriminative LRs"),
        (54_000, 6_000, 0.8923, "full", "54000 training images, probe 0.8923"),
        (54_000, 6_000, None, "full", "no probe"),
    ],
)
def test_auto_picks_by_data_and_probe(size, val, probe, strategy, words):
    choice = choose_strategy(size, val, probe, probe_good=0.99)
    assert choice.strategy == strategy and words in choice.reason


def test_probe_accuracy_is_the_best_epochs_val_accuracy():
    history = [{"epoch": 1, "val_accuracy": 0.5}, {"epoch": 2, "val_accuracy": 0.7}]
    assert probe_accuracy({"best_epoch": 2, "history": history}) == 0.7
    assert probe_accuracy({"best_epoch": 1, "history": [{"epoch": 1}]}) is None


@pytest.mark.parametrize(
    ("policy", "probe", "escalate"),
    [("always", 0.99, True), ("never", 0.1, False), ("auto", 0.84, True),
     ("auto", 0.85, False), ("auto", None, True)],
)  # fmt: skip
def test_retrain_escalation_follows_the_policy(policy, probe, escalate):
    choice = should_escalate(policy, 0.85, probe)
    assert (choice.strategy == "finetune") == escalate and choice.reason
