"""The registered model's ONNX twin: ``model.onnx`` in the saved model's folder, so MLflow logs
it with the version, beside the safetensors pyfunc."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from thawline.config import Config
from thawline.data.store import PreparedStore
from thawline.models.onnx_export import ExportError, export_onnx
from thawline.models.storage import MODEL_ONNX, load_classifier

log = logging.getLogger(__name__)
ONNX_CHECK_ITEMS = 64  # test items onnxruntime must agree with PyTorch on


def export_portable(cfg: Config, model_dir: Path) -> dict[str, Any]:
    """``model.onnx`` in the saved model's folder, so it is logged with the registered version,
    checked against PyTorch on the first test items. A failed export is a warning: the
    safetensors model is what registers."""
    path = model_dir / MODEL_ONNX
    if not cfg.registry.onnx:
        path.unlink(missing_ok=True)  # an earlier run's file would no longer match the model
        return {"exported": False, "reason": "registry.onnx is false"}
    store = PreparedStore(cfg.paths.prepared)
    data = store.load("test" if "test" in store.splits else store.splits[0])
    items = data.texts if data.texts is not None else list(data.images)
    try:
        done = export_onnx(load_classifier(model_dir), path, items[:ONNX_CHECK_ITEMS])
    except ExportError as err:
        path.unlink(missing_ok=True)
        log.warning("register: no ONNX file: %s", err)
        return {"exported": False, "reason": str(err)}
    log.info("register: %s (opset %d), onnxruntime within %.1e of PyTorch on %d test items",
             path, done.opset, done.max_abs_difference, done.checked_examples)  # fmt: skip
    return {"exported": True, "path": str(path), "opset": done.opset, "inputs": done.inputs,
            "max_abs_difference": done.max_abs_difference,
            "checked_examples": done.checked_examples}  # fmt: skip
