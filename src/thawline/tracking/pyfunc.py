"""The registered model's pyfunc: images in, labels and probabilities out.

The weights stay as ``model.safetensors`` + ``model.json`` (a thawline model folder) among the
MLflow model's artifacts; :class:`ThawlineModel` rebuilds the classifier from them in
``load_context``. MLflow cloudpickles the ``ThawlineModel`` instance itself, which is why it holds
no state before ``load_context``: no tensor ever goes through pickle.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
from mlflow.environment_variables import _MLFLOW_IS_IN_SERVING_ENVIRONMENT
from mlflow.models import ModelSignature
from mlflow.types.schema import AnyType, Array, ColSpec, ParamSchema, ParamSpec, Schema

from thawline.data.images import BadImageError, decode_image, square_uint8
from thawline.models.classifier import Classifier
from thawline.models.storage import load_classifier
from thawline.models.tta import TTAError, check_tta, tta_softmax
from thawline.tracking.refusals import invalid

MAX_PIXELS = 50_000_000  # as prepare.max_pixels: larger inputs are refused before decoding
PIXEL_LIMIT = "the model's pixel limit"  # what a size error names (no params.yaml when served)
MAX_FILE_BYTES = 256 << 20
BATCH = 64
TOP_K = 5  # labels and scores per image, best first (all classes when there are fewer)
INPUT_FORMATS = (
    "column 'image': per row, image file bytes, base64 of them (optionally a data: URL), "
    "a file path (not when served), or an H x W x 3 / H x W uint8 array or nested list"
)
SERVED_FORMATS = (
    'accepted: {"dataframe_split": {"columns": ["image"], "data": [["<base64>"]]}}, '
    '{"dataframe_records": [{"image": "<base64>"}]}, {"inputs": {"image": ["<base64>"]}} '
    'or {"instances": [{"image": "<base64>"}]}'
)


class ThawlineModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of a thawline :class:`Classifier` (artifact ``model``: its folder)."""

    def load_context(self, context: Any) -> None:
        self._model = load_classifier(Path(context.artifacts["model"]))

    @property
    def classifier(self) -> Classifier:
        """The loaded network (``thawline export`` and other tools that need the module)."""
        return self._model

    # A DataFrame hint keeps MLflow's signature-based parsing (other hints replace it).
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None):
        """Classify images.

        Args:
            context: MLflow's context (unused after ``load_context``).
            model_input: A DataFrame with an ``image`` column (see ``INPUT_FORMATS``), or a
                list of such values.
            params: ``tta``: ``none`` (the default), ``flip`` or ``flip_shift``, softmax averaged
                over the image and its mirror (and shifts); image models only (models/tta.py).

        Returns:
            A DataFrame with ``label``, ``probability``, ``top_labels`` and
            ``top_probabilities`` (the best ``TOP_K``, best first) and ``probabilities`` (all
            classes, in class order).

        Raises:
            MlflowException: ``INVALID_PARAMETER_VALUE`` (HTTP 400 when served) naming the row.
        """
        tta = str((params or {}).get("tta") or "none")
        try:
            check_tta(tta, self._model.modality)
        except TTAError as error:
            raise invalid(str(error)) from None
        if self._model.modality == "text":
            from thawline.tracking.text_pyfunc import classify_texts, text_column

            return classify_texts(self._model, text_column(model_input))
        return classify(self._model, image_column(model_input), tta)


def classify(model: Classifier, values: list[Any], tta: str = "none") -> pd.DataFrame:
    """Decode every value, then run the classifier in batches (averaged over ``tta``'s views).

    Raises:
        TTAError: An unknown ``tta``, or TTA asked of a text model.
    """
    check_tta(tta, model.modality)
    allow_paths = not _MLFLOW_IS_IN_SERVING_ENVIRONMENT.get()
    images = [to_image_tensor(v, model.image_size, i, allow_paths) for i, v in enumerate(values)]
    probs = []
    with torch.inference_mode():
        for start in range(0, len(images), BATCH):
            batch = torch.stack(images[start : start + BATCH])
            # Resize, crop and normalise exactly once, as extraction did; the views and the
            # network take it from there.
            probs.append(tta_softmax(model.network, model.preprocess(batch), tta))
    table = torch.cat(probs).numpy() if probs else np.zeros((0, len(model.classes)), np.float32)
    return prediction_table(model.classes, table)


def prediction_table(classes: list[str], table: np.ndarray) -> pd.DataFrame:
    """Probabilities ``[N, C]`` to the served answer: the label, its probability, the top k."""
    order = np.argsort(-table, axis=1, kind="stable")[:, :TOP_K]
    best = order[:, 0] if len(table) else np.zeros(0, np.int64)
    return pd.DataFrame(
        {
            "label": [classes[i] for i in best],
            "probability": table[np.arange(len(best)), best].astype(float),
            "top_labels": [[classes[i] for i in row] for row in order],
            "top_probabilities": [
                table[r, row].astype(float).tolist() for r, row in enumerate(order)
            ],
            "probabilities": [row.astype(float).tolist() for row in table],
        }
    )


def image_column(model_input: Any) -> list[Any]:
    """The ``image`` values of a DataFrame (or a plain list / dict of lists)."""
    if isinstance(model_input, pd.DataFrame):
        if "image" not in model_input.columns:
            names = [str(c)[:40] for c in model_input.columns][:5]
            raise invalid(f"expected a column 'image', got columns {names}; {SERVED_FORMATS}")
        return _encoded_batches(list(model_input["image"]))
    if isinstance(model_input, dict) and "image" in model_input:
        values = model_input["image"]
        return list(values) if isinstance(values, (list, tuple, np.ndarray)) else [values]
    if isinstance(model_input, list):
        return model_input
    raise invalid(f"expected an 'image' column, got {type(model_input).__name__}; {SERVED_FORMATS}")


def _encoded_batches(values: list[Any]) -> list[Any]:
    """Cells that hold several encoded images, one after another.

    ``{"inputs": {"image": [b64, b64]}}`` reaches the model as one row whose cell is the whole
    list (MLflow's schema enforcement of a column of any type). A list of strings or bytes is
    never one image (pixels are numbers), so such a cell is taken as that many rows.
    """
    rows: list[Any] = []
    for value in values:
        many = isinstance(value, (list, tuple, np.ndarray)) and len(value) > 0
        if many and all(isinstance(v, (str, bytes)) for v in value):
            rows += list(value)
        else:
            rows.append(value)
    return rows


def to_image_tensor(value: Any, size: int, row: int, allow_paths: bool = True) -> torch.Tensor:
    """One input value to a uint8 ``[3, size, size]`` tensor, as the prepared store holds."""
    try:
        if isinstance(value, (bytes, bytearray, memoryview)):
            image = decode_image(bytes(value), f"image {row}", MAX_PIXELS, PIXEL_LIMIT)
        elif isinstance(value, str):
            image = _image_from_string(value, row, allow_paths)
        elif isinstance(value, (list, tuple, np.ndarray)):
            image = pixel_array(value, row)
        else:
            raise invalid(
                f"image {row}: unsupported value of type {type(value).__name__}; {SERVED_FORMATS}"
            )
    except BadImageError as err:
        raise invalid(str(err)) from None
    return square_uint8(image, size)


def pixel_array(value: Any, row: int) -> np.ndarray:
    """Validate an H x W x 3 or H x W array of 0..255 integers; return it as uint8."""
    try:
        array = np.asarray(value)
    except ValueError:
        array = np.asarray(value, dtype=object)
    where = f"image {row}: expected an H x W x 3 or H x W array of uint8 pixels"
    if not np.issubdtype(array.dtype, np.integer):
        raise invalid(f"{where}, got dtype {array.dtype} (ragged lists or non-integers)")
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)) or 0 in array.shape:
        raise invalid(f"{where}, got shape {tuple(array.shape)}")
    if array.shape[0] * array.shape[1] > MAX_PIXELS:
        raise invalid(
            f"image {row}: {array.shape[0]}x{array.shape[1]} pixels exceeds {PIXEL_LIMIT}="
            f"{MAX_PIXELS:,}"
        )
    if array.dtype != np.uint8 and (array.min() < 0 or array.max() > 255):
        raise invalid(f"{where}, got values from {array.min()} to {array.max()}")
    return array.astype(np.uint8, copy=False)


def _image_from_string(value: str, row: int, allow_paths: bool):
    if allow_paths and len(value) < 4096 and "\n" not in value:
        path = Path(value).expanduser()
        if path.is_file():
            if path.stat().st_size > MAX_FILE_BYTES:
                raise invalid(f"{path}: larger than {MAX_FILE_BYTES >> 20} MiB")
            return decode_image(path.read_bytes(), str(path), MAX_PIXELS, PIXEL_LIMIT)
    text = value.split(",", 1)[1] if value.startswith("data:") else value
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        if allow_paths:
            raise invalid(f"image {row}: neither an existing file nor base64 image bytes") from None
        raise invalid(
            f"image {row}: not base64 image bytes (a served model reads no files)"
        ) from None
    return decode_image(data, f"image {row}", MAX_PIXELS, PIXEL_LIMIT)


def model_signature(column: str = "image") -> ModelSignature:
    """Input: one ``image`` column of any of the accepted forms (or ``text``, strings); output:
    label + probabilities; params: ``tta`` (image models)."""
    params = ParamSchema([ParamSpec("tta", "string", "none")]) if column == "image" else None
    return ModelSignature(
        inputs=Schema([ColSpec(AnyType(), column)]),
        outputs=Schema(
            [
                ColSpec("string", "label"),
                ColSpec("double", "probability"),
                ColSpec(Array("string"), "top_labels"),
                ColSpec(Array("double"), "top_probabilities"),
                ColSpec(Array("double"), "probabilities"),
            ]
        ),
        params=params,
    )


def input_example(examples: list[bytes] | list[str]) -> pd.DataFrame:
    """Encoded image files as the JSON-friendly form a served model receives (base64 strings),
    or documents as they are."""
    if examples and isinstance(examples[0], str):
        return pd.DataFrame({"text": examples})
    return pd.DataFrame({"image": [base64.b64encode(data).decode("ascii") for data in examples]})
