"""Test-time augmentation's views and averaging (models/tta.py) on small tensors."""

from __future__ import annotations

import pytest
import torch

from thawline.errors import InputError
from thawline.models.tta import TTA_CHOICES, TTAError, check_tta, tta_softmax, tta_views


def test_each_setting_has_its_views_the_plain_one_first():
    x = torch.randn(2, 3, 64, 64)
    assert [len(tta_views(kind, 64)) for kind in TTA_CHOICES] == [1, 2, 6]
    for kind in TTA_CHOICES:
        assert torch.equal(tta_views(kind, 64)[0](x), x)
    assert torch.equal(tta_views("flip", 64)[1](x), x.flip(-1))


def test_shifts_move_the_image_a_thirty_second_of_its_size_repeating_the_edge():
    x = torch.arange(64.0).repeat(1, 3, 64, 1)  # each row 0..63: the value is the column
    right, left, down, up = tta_views("flip_shift", 64)[2:]
    step = 2  # 64 px / 32
    assert torch.equal(right(x)[..., step:], x[..., :-step])  # content moved right...
    assert torch.equal(right(x)[..., :step], x[..., :1].expand(-1, -1, -1, step))  # ...edge fill
    assert torch.equal(left(x)[..., :-step], x[..., step:])
    assert all(view(x).shape == x.shape for view in (right, left, down, up))
    assert torch.equal(down(x), x) and torch.equal(up(x), x)  # rows are all the same
    assert len({tuple(v(torch.randn(1, 1, 8, 8)).shape) for v in tta_views("flip_shift", 8)}) == 1


def test_averaged_softmax_is_a_distribution_and_plain_without_views():
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    x = torch.randn(5, 3, 8, 8)
    plain = torch.softmax(network(x), dim=1)
    assert torch.allclose(tta_softmax(network, x, "none"), plain)
    flipped = tta_softmax(network, x, "flip")
    assert torch.allclose(flipped, (plain + torch.softmax(network(x.flip(-1)), dim=1)) / 2)
    assert torch.allclose(tta_softmax(network, x, "flip_shift").sum(1), torch.ones(5))


def test_bad_settings_and_text_models_are_refused_with_what_is_allowed():
    with pytest.raises(TTAError, match="'flop'.*none, flip, flip_shift"):
        tta_views("flop", 64)
    with pytest.raises(TTAError, match="image models only; this is a text model"):
        check_tta("flip", "text")
    check_tta("none", "text")  # nothing asked, nothing refused
    assert issubclass(TTAError, InputError)  # the CLI: one line, exit 2
