"""The LR range test: fastai's suggestion rules on a curve worked by hand, a NaN range survived,
and a real head's sweep on separable features."""

from __future__ import annotations

import math

import torch

from thawline.config import HeadParams
from thawline.training.lr_find import END, START, find_head_lr, lr_sweep, steep, suggest, valley


def test_valley_and_steep_follow_fastai_on_a_curve_worked_by_hand():
    lrs = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    losses = [5.0, 4.0, 6.0, 3.0, 2.0, 1.0, 7.0]
    # Longest falling run: 5 > 4 > 3 > 2 > 1 (indices 0..5, length 5); a third of it plus a
    # sixth, rounded down separately as fastai does: 0 + int(5/3) + int(5/6) = index 1.
    assert valley(lrs, losses) == 2.0
    # Slopes against log LR: -1.44, +4.93, -10.4, -4.48, -5.48, +38.9: the steepest at index 2.
    assert steep(lrs, losses) == 3.0


def test_a_range_that_turns_nan_stops_there_and_still_suggests_a_finite_lr():
    def step(lr: float) -> float:
        return math.nan if lr > 1e-2 else 2.0 - 0.1 * math.log10(lr / START)

    lrs, losses, stopped = lr_sweep(step)
    assert "the loss became nan" in stopped and max(lrs) <= 1e-2 and all(map(math.isfinite, losses))
    found = suggest(lrs, losses, stopped, START)
    assert START <= found.valley <= 1e-2 and START <= found.steep <= 1e-2
    at_once = suggest(*lr_sweep(lambda lr: math.inf), START)  # nothing to read at all
    assert at_once.valley == START * 10 and "too short to read" in at_once.stopped


def test_a_diverging_loss_stops_the_sweep_at_four_times_its_minimum():
    lrs, losses, stopped = lr_sweep(lambda lr: 1.0 if lr < 1e-3 else 1.0 + 1e3 * lr)
    assert "4x its minimum" in stopped and lrs[-1] < END and losses[-1] > 4 * min(losses)


def test_the_head_sweep_on_separable_features_suggests_a_sane_lr():
    torch.manual_seed(0)
    centres = torch.randn(4, 32) * 3
    labels = torch.arange(4).repeat(100)
    features = centres[labels] + torch.randn(400, 32)
    found = find_head_lr((features, labels), 4, HeadParams(), seed=0)
    assert 1e-5 < found.valley < 1.0 and 1e-6 < found.steep < 10
    assert found.losses[0] > min(found.losses)  # the loss fell before it rose
    again = find_head_lr((features, labels), 4, HeadParams(), seed=0)
    assert again == found  # seeded: the same suggestion every time
