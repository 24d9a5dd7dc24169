"""Epoch 0's loud checks: a head that misreads the features is called out; an overconfident one
that is well above chance (a probe picked by accuracy on a few dozen images) is not."""

from __future__ import annotations

from thawline.training.start import Start, StartChecks


def checks() -> StartChecks:
    start = Start(model=None, expected=None, source="the probe")
    return StartChecks(start, val_count=21, num_classes=10, inner=None)


def test_a_head_near_chance_with_a_uniform_loss_is_called_out():
    found = checks()
    found(0, {"val_accuracy": 0.12, "val_loss": 2.9})
    assert len(found.findings) == 1 and "does not fit the backbone's features" in found.findings[0]


def test_an_overconfident_head_well_above_chance_is_not():
    quiet = checks()
    quiet(0, {"val_accuracy": 0.43, "val_loss": 2.835})  # prepared_small's probe at 32 px
    assert quiet.findings == []
