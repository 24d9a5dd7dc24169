"""The served model's input decoding: every accepted form, and a clear 400-style error otherwise."""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from PIL import Image

from thawline.tracking.pyfunc import image_column, to_image_tensor


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


RGB = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "value",
    [
        png(RGB),
        base64.b64encode(png(RGB)).decode(),
        base64.encodebytes(png(RGB)).decode(),  # MLflow's own encoder wraps lines
        "data:image/png;base64," + base64.b64encode(png(RGB)).decode(),
        RGB,
        RGB.tolist(),
    ],
    ids=["bytes", "base64", "base64-lines", "data-url", "array", "nested-list"],
)
def test_every_accepted_form_gives_the_same_square_tensor(value):
    tensor = to_image_tensor(value, 16, row=0)
    assert tensor.shape == (3, 16, 16) and str(tensor.dtype) == "torch.uint8"
    assert tensor.equal(to_image_tensor(RGB, 16, row=0))


def test_grayscale_arrays_and_file_paths(tmp_path):
    gray = RGB[..., 0]
    assert to_image_tensor(gray, 8, row=0).shape == (3, 8, 8)
    path = tmp_path / "x.png"
    path.write_bytes(png(RGB))
    assert to_image_tensor(str(path), 16, row=0).equal(to_image_tensor(RGB, 16, row=0))
    with pytest.raises(MlflowException, match="reads no files"):
        to_image_tensor(str(path), 16, row=0, allow_paths=False)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"", "empty file"),
        (b"GIF89a but not really", "cannot decode image"),
        ("not base64 at all!", "neither an existing file nor base64"),
        (np.zeros((4, 4, 2), np.uint8), "got shape (4, 4, 2)"),
        (np.zeros((4, 4, 3), np.float32), "got dtype float32"),
        ([[1, 2], [3]], "ragged lists or non-integers"),
        ([[1, 300], [3, 4]], "values from 1 to 300"),
        (np.zeros((0, 4), np.uint8), "got shape (0, 4)"),
        (3.5, "unsupported value of type float"),
    ],
)
def test_bad_input_is_an_invalid_parameter_error_naming_the_row(value, message):
    with pytest.raises(MlflowException, match="image 7") as err:
        to_image_tensor(value, 16, row=7)
    assert message in err.value.message
    assert err.value.get_http_status_code() == 400


def test_the_image_column_is_required():
    assert image_column(pd.DataFrame({"image": [b"a", b"b"]})) == [b"a", b"b"]
    with pytest.raises(MlflowException, match="column 'image'"):
        image_column(pd.DataFrame({"picture": [b"a"]}))
