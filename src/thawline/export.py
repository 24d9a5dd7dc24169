"""``thawline export``: a registered or saved model as one ONNX file that onnxruntime runs alone.

thawline export --model models:/thawline@champion --out model.onnx
thawline export --model models/model --layout nchw

The graph and its check are :mod:`thawline.models.onnx_export`; this module finds the model and
the inputs to check it on (the project's own test items when there are, else a few synthetic
ones, said so).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_MODEL = "models:/thawline@champion"
CHECK_ITEMS = 32  # test items onnxruntime and PyTorch are compared on
SYNTHETIC_TEXTS = [
    "Shares in the company rose after it reported record profits for the year.",
    "The striker scored twice as the home side won the cup final.",
]


def add_export_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from thawline.models.onnx_options import LAYOUTS, OPSET

    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"registered model URI or model folder (default: {DEFAULT_MODEL})",
    )
    parser.add_argument("--out", type=Path, default=Path("model.onnx"),
                        help="the .onnx file to write (default: model.onnx); a text model's "
                        "tokenizer goes beside it, in <name>.tokenizer/")  # fmt: skip
    parser.add_argument("--layout", choices=LAYOUTS, default="nhwc",
                        help="image input: uint8 [N, S, S, 3] (nhwc, as PIL/numpy give) or "
                        "[N, 3, S, S] (default: nhwc)")  # fmt: skip
    parser.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default: {OPSET})")
    parser.add_argument("--tracking-uri", help="MLflow store holding the model (default: "
                        "$MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")  # fmt: skip
    return parser


def main_export(args: argparse.Namespace, prepared: Path | None) -> int:
    """Export, check and say what was written; returns the exit status."""
    from thawline.models.onnx_export import export_onnx
    from thawline.tracking import load_classifier_from, mlflow_errors

    with mlflow_errors():
        model = load_classifier_from(args.model, args.tracking_uri)
    inputs, source = check_inputs(model, prepared)
    done = export_onnx(model, args.out, inputs, args.layout, args.opset)
    what = (f"input_ids + attention_mask int64 [N, L]; tokenizer in {done.tokenizer}"
            if done.tokenizer else f"pixels uint8 {_shape(args.layout)}")  # fmt: skip
    print(
        f"thawline: wrote {done.path} (opset {done.opset}; {what}; output probabilities "
        f"[N, {len(model.classes)}], temperature {model.temperature:.4g})",
        file=sys.stderr,
    )
    print(f"thawline: onnxruntime matches PyTorch on {done.checked_examples} {source}: max "
          f"|difference| {done.max_abs_difference:.1e}", file=sys.stderr)  # fmt: skip
    return 0


def check_inputs(model, prepared: Path | None, count: int = CHECK_ITEMS) -> tuple[list, str]:
    """Items to compare onnxruntime and PyTorch on, and what they are: the prepared test split
    when it belongs to this model (same classes), else synthetic ones."""
    from thawline.data.store import PreparedStore
    from thawline.errors import StoreError

    try:
        store = PreparedStore(prepared) if prepared is not None else None
        if store is not None and store.classes == model.classes and "test" in store.splits:
            data = store.load("test")
            if data.texts is not None and model.modality == "text":
                return list(data.texts[:count]), "test documents"
            if data.texts is None and model.modality == "image":
                return list(data.images[:count]), "test images"
    except (StoreError, OSError, KeyError, ValueError):
        pass
    if model.modality == "text":
        return SYNTHETIC_TEXTS, "synthetic sentences (no prepared test split of this model here)"
    return synthetic_images(model.image_size), (
        "synthetic images (no prepared test split of this model here)"
    )


def synthetic_images(size: int, count: int = 4) -> list:
    """Smooth colour gradients: deterministic, and not all one class."""
    import torch

    rows, cols = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size),
                                indexing="ij")  # fmt: skip
    return [
        (torch.stack([rows, cols, torch.full_like(rows, k / max(count - 1, 1))]) * 255)
        .round().to(torch.uint8)
        for k in range(count)
    ]  # fmt: skip


def _shape(layout: str) -> str:
    return "[N, S, S, 3]" if layout == "nhwc" else "[N, 3, S, S]"
