"""``finetune.strategy: auto`` follows the seeds' rule, with the linear probe as evidence; and
``precision: auto`` on a CPU trains small inputs in fp32."""

from __future__ import annotations

import pytest
import torch

from thawline.training.batches import CPU_BF16_MIN_SIZE, resolve_precision
from thawline.training.strategy import choose_strategy, probe_accuracy, should_escalate


@pytest.mark.parametrize(
    ("size", "probe", "strategy", "words"),
    [
        (999, 0.3, "head_only", "< 1,000"),
        (1_000, 0.99, "gradual", "1,000-10,000"),
        (10_000, 0.5, "gradual", "1,000-10,000"),
        (10_001, 0.5, "full", "fit this domain poorly"),
        (54_000, 0.8923, "full", "0.8923"),
        (54_000, 0.95, "gradual", "the features transfer"),
        (54_000, None, "full", "no probe"),
    ],
)
def test_auto_picks_by_size_and_probe(size, probe, strategy, words):
    choice = choose_strategy(size, probe, probe_good=0.9)
    assert choice.strategy == strategy and words in choice.reason


def test_probe_accuracy_is_the_best_epochs_val_accuracy():
    history = [{"epoch": 1, "val_accuracy": 0.5}, {"epoch": 2, "val_accuracy": 0.7}]
    assert probe_accuracy({"best_epoch": 2, "history": history}) == 0.7
    assert probe_accuracy({"best_epoch": 1, "history": [{"epoch": 1}]}) is None


def test_cpu_auto_precision_is_fp32_for_small_inputs():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu, 64).name == "fp32"
    large = resolve_precision("auto", cpu, CPU_BF16_MIN_SIZE).name
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert large == ("bf16" if native else "fp32")
    assert resolve_precision("bf16", cpu, 32).name == "bf16"  # an explicit choice is kept
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", cpu, 64)


@pytest.mark.parametrize(
    ("policy", "probe", "escalate"),
    [("always", 0.99, True), ("never", 0.1, False), ("auto", 0.84, True),
     ("auto", 0.85, False), ("auto", None, True)],
)  # fmt: skip
def test_retrain_escalation_follows_the_policy(policy, probe, escalate):
    choice = should_escalate(policy, 0.85, probe)
    assert (choice.strategy == "finetune") == escalate and choice.reason
