"""Every image mode becomes 3xHxW uint8; bad files raise errors that name the file."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from thawline.data.images import BadImageError, decode_image, square_uint8


def encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def gradient(mode: str) -> Image.Image:
    base = Image.fromarray(np.tile(np.arange(0, 250, 10, dtype=np.uint8), (20, 1)))
    if mode == "I;16":
        return Image.fromarray(np.asarray(base).astype(np.uint16) * 257)
    return base.convert(mode)


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("L", "PNG"),
        ("RGB", "JPEG"),
        ("RGBA", "PNG"),
        ("CMYK", "JPEG"),
        ("P", "PNG"),
        ("I;16", "PNG"),
        ("1", "PNG"),
        ("LA", "PNG"),
    ],
)
def test_every_mode_becomes_rgb(mode, fmt):
    img = decode_image(encode(gradient(mode), fmt), f"x.{fmt.lower()}", max_pixels=10**6)
    assert img.mode == "RGB"
    tensor = square_uint8(img, 16)
    assert tensor.shape == (3, 16, 16)
    assert tensor.dtype.is_floating_point is False
    if mode not in ("1",):  # the gradient survives: 16-bit is rescaled, not clipped to white
        assert 0 < tensor.float().mean() < 250


def test_sixteen_bit_is_rescaled_not_clipped():
    img = Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16))
    rgb = np.asarray(decode_image(encode(img), "a.png", max_pixels=10**6))
    assert abs(int(rgb[0, 0, 0]) - 128) <= 1


def test_transparent_pixels_become_white():
    img = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgb = np.asarray(decode_image(encode(img), "a.png", max_pixels=10**6))
    assert (rgb == 255).all()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"this is text, not a picture", "cannot decode image"),
        (encode(gradient("RGB"), "JPEG")[:200], "cannot decode image"),
    ],
)
def test_bad_files_name_the_path(data, reason):
    with pytest.raises(BadImageError) as err:
        decode_image(data, "cats/broken.jpg", max_pixels=10**6)
    assert str(err.value).startswith("cats/broken.jpg: ")
    assert reason in str(err.value)


def test_decompression_bomb_is_refused_before_decoding():
    bomb = encode(Image.new("L", (5000, 5000)), "PNG")  # tiny file, 25M pixels
    assert len(bomb) < 100_000
    with pytest.raises(BadImageError, match="exceeds prepare.max_pixels"):
        decode_image(bomb, "bomb.png", max_pixels=1_000_000)


def test_square_resizes_shorter_side_and_centre_crops():
    img = Image.new("RGB", (40, 20), (10, 20, 30))
    out = square_uint8(img, 10)
    assert out.shape == (3, 10, 10)
    assert out[:, 5, 5].tolist() == [10, 20, 30]
