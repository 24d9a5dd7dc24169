"""Resizing to a square (modes and bad files: tests/reliability/test_bad_input.py)."""

from __future__ import annotations

from PIL import Image

from thawline.data.images import square_uint8


def test_square_resizes_shorter_side_and_centre_crops():
    img = Image.new("RGB", (40, 20), (10, 20, 30))
    out = square_uint8(img, 10)
    assert out.shape == (3, 10, 10)
    assert out[:, 5, 5].tolist() == [10, 20, 30]
