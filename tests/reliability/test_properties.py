"""Property-based tests (RELIABILITY.md 28), with hypothesis: random ``-S`` overrides either
validate or give the one-line config error (exit 2, never a traceback, never a write), and random
bytes given to the image decoder end as an RGB image or as ``BadImageError``, nothing else.

The example counts are fixed here and recorded in docs/reliability.md."""

from __future__ import annotations

import contextlib
import io
import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.conftest import REPO, shipped_params
from thawline.cli import main
from thawline.data.images import decode_image, square_uint8
from thawline.errors import BAD_INPUT, BadImageError

CONFIG_EXAMPLES, DECODER_EXAMPLES = 300, 400
QUICK = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def known_keys() -> list[str]:
    """Every dotted key of the shipped params (sections and leaves)."""
    keys = []

    def walk(prefix: str, value) -> None:
        keys.append(prefix)
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}", inner)

    for section, value in shipped_params().items():
        walk(section, value)
    return keys


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
)  # fmt: skip
yaml_values = st.one_of(
    scalars.map(lambda v: "null" if v is None else str(v)),
    st.sampled_from(["[]", "{}", "[1, 2]", "{a: 1}", "[{groups: 3, lr: 0.001}]", "-1", "0",
                     "1e-6", "1e6", "auto", "'", "[", "{", ": :", "!!python/object:os.system",
                     "*anchor", "&a [*a]", "~", ".nan", "-.inf", "0x10", "'  '"]),
    st.text(max_size=30),
)  # fmt: skip
override_keys = st.one_of(
    st.sampled_from(known_keys()),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz_.", min_size=1, max_size=25),
    st.text(max_size=10),
)


@settings(QUICK, max_examples=CONFIG_EXAMPLES)
@given(overrides=st.lists(st.tuples(override_keys, yaml_values), min_size=1, max_size=3))
def test_random_overrides_validate_or_give_one_line_and_write_nothing(overrides, tmp_path):
    params = tmp_path / "params.yaml"
    if not params.exists():
        params.write_text((REPO / "params.yaml").read_text())
    before = params.read_bytes()
    listing = sorted(os.listdir(tmp_path))
    argv = ["config", "-p", str(params)]
    for key, value in overrides:  # --set=: a key may start with "-" (argparse takes it whole)
        argv.append(f"--set={key}={value}")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    said = err.getvalue()
    assert code in (0, BAD_INPUT), said  # never 3 (a crash)
    assert "Traceback" not in said
    if code == BAD_INPUT:
        assert said.startswith("thawline: config error: ") and said.count("\n") == 1, said
    else:
        assert said == "" and out.getvalue().startswith("{")
    assert params.read_bytes() == before and sorted(os.listdir(tmp_path)) == listing


def encoded(kind: str, seed: int) -> bytes:
    """A small real image file of ``kind``."""
    rng = random.Random(seed)
    mode = rng.choice(["L", "RGB", "RGBA", "P", "1", "CMYK", "I;16", "LA"])
    size = (rng.randint(1, 40), rng.randint(1, 40))
    img = Image.new(mode if mode != "I;16" else "I", size, rng.randint(0, 255))
    if mode == "I;16":
        img = img.convert("I;16")
    buffer = io.BytesIO()
    try:
        img.save(buffer, format=kind)
    except (OSError, ValueError, KeyError):  # a mode the format cannot store
        img.convert("RGB").save(buffer, format=kind)
    return buffer.getvalue()


@st.composite
def image_bytes(draw) -> bytes:
    """Random bytes, a real file cut short, or a real file with bytes overwritten."""
    how = draw(st.sampled_from(["random", "truncated", "corrupted", "magic"]))
    if how == "random":
        return draw(st.binary(max_size=2048))
    kind = draw(st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "ICO", "PPM"]))
    data = bytearray(encoded(kind, draw(st.integers(0, 10**6))))
    if how == "magic":  # a real header, then noise
        return bytes(data[:16]) + draw(st.binary(max_size=512))
    if how == "truncated":
        return bytes(data[: draw(st.integers(0, len(data)))])
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    return bytes(data)


@pytest.mark.filterwarnings("ignore::UserWarning:PIL")  # corrupt TIFF tags: PIL warns, then decides
@settings(deadline=None, max_examples=DECODER_EXAMPLES)
@given(data=image_bytes())
def test_random_bytes_decode_to_rgb_or_a_bad_image_error(data):
    try:
        img = decode_image(data, "fuzz.bin", max_pixels=50_000_000)
    except BadImageError as err:
        assert str(err).startswith("fuzz.bin: "), err
        return
    assert img.mode == "RGB" and img.width >= 1 and img.height >= 1
    pixels = square_uint8(img, 32)
    assert tuple(pixels.shape) == (3, 32, 32)
