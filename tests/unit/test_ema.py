"""The EMA of the fine-tuned weights (training/ema.py): timm's average, and which weights an
epoch offers as its best."""

from __future__ import annotations

import torch

from thawline.config import FinetuneParams
from thawline.training.ema import WeightAverage


class Trainer(WeightAverage):
    def __init__(self, ema: bool):
        self.opts = FinetuneParams(ema=ema, ema_decay=0.9)
        self.model = torch.nn.Linear(3, 2)
        self._start_ema()


def test_the_average_follows_the_weights_with_timms_warm_up():
    trainer = Trainer(ema=True)
    start = trainer.model.weight.detach().clone()
    with torch.no_grad():
        trainer.model.weight.add_(1.0)
    trainer._update_ema(1)  # timm: decay 0 at the first step, so the average is the weights
    assert torch.equal(trainer.ema.module.weight, trainer.model.weight)
    with torch.no_grad():
        trainer.model.weight.add_(1.0)
    trainer._update_ema(1000)  # warmed up: decay capped at ema_decay 0.9
    expected = 0.9 * (start + 1.0) + 0.1 * trainer.model.weight
    assert torch.allclose(trainer.ema.module.weight, expected)
    saved = trainer._ema_state()
    other = Trainer(ema=True)
    other._load_ema_state(saved)
    assert torch.equal(other.ema.module.weight, trainer.ema.module.weight)


def test_the_better_of_raw_and_averaged_weights_is_the_candidate():
    trainer = Trainer(ema=True)
    raw = {"val_accuracy": 0.80, "val_loss": 0.5}
    better = raw | {"ema_val_accuracy": 0.82, "ema_val_loss": 0.6}
    chosen, weights = trainer._candidate(better)
    assert weights is trainer.ema.module and chosen["weights"] == "ema"
    assert chosen["val_accuracy"] == 0.82 and chosen["val_loss"] == 0.6
    tie = raw | {"ema_val_accuracy": 0.80, "ema_val_loss": 0.4}  # equal accuracy, lower loss
    assert trainer._candidate(tie)[1] is trainer.ema.module
    worse = raw | {"ema_val_accuracy": 0.79, "ema_val_loss": 0.1}
    chosen, weights = trainer._candidate(worse)
    assert weights is trainer.model and chosen == worse | {"weights": "raw"}


def test_without_ema_nothing_changes():
    trainer = Trainer(ema=False)
    metrics = {"val_accuracy": 0.8, "val_loss": 0.5}
    assert trainer.ema is None and trainer._candidate(metrics) == (metrics, trainer.model)
    assert trainer._validate_ema() == {} and trainer._ema_state() == {}
    trainer._update_ema(1)  # a no-op
