"""A saved classifier as one portable ONNX file: raw input in, calibrated probabilities out.

- Images: the graph takes square uint8 pixels ``[N, S, S, 3]`` (``layout="nhwc"``, what PIL
  and numpy give) or ``[N, 3, S, S]`` of any size S, resizes, crops, normalises, runs the
  network and returns ``softmax(logits / T)``: a user needs onnxruntime and an image array.
  (A centre crop to a square of data-dependent size does not pass ``torch.export`` in torch
  2.14; ``PIL.ImageOps.fit`` does it in one line, as the README's example shows.)
- Text: the graph takes ``input_ids`` and ``attention_mask`` ``[N, L]`` (int64); the tokenizer's
  files go in a folder beside the ``.onnx`` file.

Exported with the dynamo exporter (``torch.onnx.export(..., dynamo=True)``): it is torch's
default and maintained path, it records the dynamic batch (and image size, and sequence length)
as symbolic shapes from ``torch.export``, and it lowers torchvision's antialiased resize, which
the TorchScript exporter cannot. Every export is checked: onnxruntime must give the same
probabilities as PyTorch (max abs difference ``TOLERANCE``) and the same argmax on the check
inputs, or nothing is written. The class names and the temperature are in the file's metadata.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from thawline.errors import ThawlineError
from thawline.files import atomic_path
from thawline.models.classifier import Classifier
from thawline.models.onnx_options import LAYOUTS, OPSET, TOKENIZER_SUFFIX, TOLERANCE
from thawline.models.text_input import stack_tokens

log = logging.getLogger(__name__)


class ExportError(ThawlineError):
    """The export failed, or onnxruntime disagrees with PyTorch."""


class PortableImageClassifier(nn.Module):
    """uint8 pixels of any size to calibrated probabilities, everything inside the graph."""

    def __init__(self, model: Classifier, layout: str = "nhwc"):
        super().__init__()
        self.model, self.layout = model, layout

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2) if self.layout == "nhwc" else pixels
        # Resized in float (a uint8 Resize rounds differently in each runtime), in the two
        # clamped and rounded passes of torchvision's uint8 resize, which training saw.
        x = self.model.preprocess.resize_float(x.float())
        x = self.model.preprocess.normalize(x)
        return torch.softmax(self.model.network(x), dim=1)  # divided by its temperature


class PortableTextClassifier(nn.Module):
    """Token ids and attention mask to calibrated probabilities."""

    def __init__(self, model: Classifier):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        tokens = stack_tokens(input_ids, attention_mask)
        return torch.softmax(self.model.network(tokens), dim=1)


@dataclass(frozen=True)
class Exported:
    """What :func:`export_onnx` wrote and how it was checked."""

    path: Path
    opset: int
    inputs: list[str]
    max_abs_difference: float
    checked_examples: int
    tokenizer: Path | None = None


def export_onnx(
    model: Classifier,
    path: Path,
    check_inputs: list,
    layout: str = "nhwc",
    opset: int = OPSET,
) -> Exported:
    """Export ``model`` to ``path`` (atomically) after checking it against PyTorch.

    Args:
        model: A loaded classifier (its spec's temperature is applied inside the graph).
        path: The ``.onnx`` file to write.
        check_inputs: Real inputs to compare PyTorch and onnxruntime on: uint8 ``[3, S, S]``
            tensors (images) or strings (text); at least one.
        layout: Images: ``nhwc`` or ``nchw`` pixels.
        opset: The ONNX opset.

    Raises:
        ExportError: The exporter failed, onnxruntime's probabilities differ from PyTorch's
            by more than ``TOLERANCE`` or in argmax, or the file cannot be written.
    """
    if layout not in LAYOUTS:
        raise ExportError(f"layout '{layout}': use one of {', '.join(LAYOUTS)}")
    if not check_inputs:
        raise ExportError("no inputs to check the exported model on")
    model = model.float().eval()
    wrapper, example, names, dynamic = _graph(model, check_inputs, layout)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            _export(wrapper, example, tmp, names, dynamic, opset)
            _add_metadata(tmp, model, layout, opset)
            difference = check_parity(tmp, wrapper, example, names)
        tokenizer = _ship_tokenizer(model, path) if model.modality == "text" else None
    except OSError as err:  # a read-only folder, a full disk: say where, not a traceback
        raise ExportError(f"{path}: cannot write the ONNX file ({err.strerror or err})") from err
    return Exported(path, opset, names, difference, len(example[0]), tokenizer)


def _graph(model: Classifier, inputs: list, layout: str):
    """The wrapper module, example inputs (a tuple), input names and dynamic shapes."""
    if model.modality == "text":
        tokens = model.preprocess(_tokenize(model, inputs))
        example = (tokens[:, 0].long().contiguous(), tokens[:, 1].long().contiguous())
        batch, length = torch.export.Dim("batch"), torch.export.Dim("sequence", max=4096)
        dynamic = {"input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}}
        return (
            PortableTextClassifier(model).eval(),
            example,
            ["input_ids", "attention_mask"],
            dynamic,
        )
    images = torch.stack([torch.as_tensor(image) for image in inputs])
    example = (images.permute(0, 2, 3, 1).contiguous() if layout == "nhwc" else images,)
    side = torch.export.Dim("side", min=8, max=8192)  # square images of any size
    dims = {0: torch.export.Dim("batch")} | ({1: side, 2: side} if layout == "nhwc"
                                             else {2: side, 3: side})  # fmt: skip
    return PortableImageClassifier(model, layout).eval(), example, ["pixels"], {"pixels": dims}


def _tokenize(model: Classifier, texts: list[str]) -> torch.Tensor:
    from thawline.models.text_input import tokenize

    spec = model.preprocess
    ids, mask, _ = tokenize(model.tokenizer, list(texts), spec.max_length, spec.truncation)
    return stack_tokens(ids, mask)


def _export(wrapper, example, path: Path, names, dynamic, opset: int) -> None:
    chatter = io.StringIO()  # the exporter prints its steps with emoji; keep them for errors
    try:
        with (
            contextlib.redirect_stdout(chatter),
            torch.inference_mode(False),
            warnings.catch_warnings(),
        ):
            # e.g. "The axis name: side will not be used": a note about naming, not a problem
            warnings.simplefilter("ignore", UserWarning)
            program = torch.onnx.export(
                wrapper, example, dynamo=True, opset_version=opset, input_names=names,
                output_names=["probabilities"], dynamic_shapes=dynamic, verbose=False,
            )  # fmt: skip
            program.save(str(path))
    except Exception as err:  # the exporter raises many types; name the step that failed
        detail = chatter.getvalue().strip().splitlines()[-1:] or [""]
        raise ExportError(f"{path}: torch.onnx.export failed ({err}; {detail[0]})") from err


def _add_metadata(path: Path, model: Classifier, layout: str, opset: int) -> None:
    import onnx

    proto = onnx.load(str(path))
    meta = {
        "thawline.classes": json.dumps(model.classes),
        "thawline.temperature": repr(model.temperature),
        "thawline.input": "tokens" if model.modality == "text" else f"uint8 {layout}",
        "thawline.opset": str(opset),
        "thawline.backbone": str(model.spec["backbone"]),
    }
    onnx.helper.set_model_props(proto, meta)
    onnx.save(proto, str(path))


def check_parity(path: Path, wrapper: nn.Module, example: tuple, names: list[str]) -> float:
    """Run the file in onnxruntime on ``example``; the max abs difference to PyTorch.

    Raises:
        ExportError: The difference exceeds ``TOLERANCE``, or an argmax differs.
    """
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {n: t.numpy() for n, t in zip(names, example, strict=True)})[0]
    with torch.inference_mode():
        want = wrapper(*example).numpy()
    difference = float(np.max(np.abs(got - want)))
    if not math.isfinite(difference) or difference > TOLERANCE:
        raise ExportError(f"{path}: onnxruntime differs from PyTorch by {difference:.2e} "
                          f"(allowed {TOLERANCE:.0e}); not exported")  # fmt: skip
    if not np.array_equal(got.argmax(1), want.argmax(1)):
        raise ExportError(f"{path}: onnxruntime and PyTorch predict different classes")
    return difference


def _ship_tokenizer(model: Classifier, path: Path) -> Path:
    """The tokenizer's files beside the graph (``model.onnx`` -> ``model.tokenizer/``)."""
    folder = path.with_suffix(TOKENIZER_SUFFIX)
    shutil.rmtree(folder, ignore_errors=True)
    model.tokenizer.save_pretrained(str(folder))
    return folder
