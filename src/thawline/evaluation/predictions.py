"""Per-example predictions on a pinned split, saved as safetensors for paired tests.

``predictions.safetensors`` holds ``labels`` and ``pred`` (int64 ``[N]``), ``correct`` (uint8
``[N]``) and ``probs`` (float32 ``[N, C]``); its metadata names the split, the split's fingerprint
and the model. The champion gate pairs two such files, row by row, only when their split
fingerprints are equal, so the test compares the same images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from thawline.evaluation import EvaluationError
from thawline.files import save_tensors, tensor_metadata

PREDICTIONS = "predictions.safetensors"
REQUIRED_META = ("split", "split_fingerprint", "model")


@dataclass
class SavedPredictions:
    labels: np.ndarray  # int64 [N]
    pred: np.ndarray  # int64 [N]
    correct: np.ndarray  # bool [N]
    probs: np.ndarray  # float32 [N, C]
    meta: dict[str, str]  # split, split_fingerprint, model (+ anything else saved)


def save_predictions(
    path: Path, labels: np.ndarray, pred: np.ndarray, probs: np.ndarray, meta: dict[str, str]
) -> str:
    """Write the predictions file atomically.

    Args:
        path: Target file.
        labels: True class indices ``[N]``.
        pred: Predicted class indices ``[N]``.
        probs: Probabilities ``[N, C]``.
        meta: Must hold ``split``, ``split_fingerprint`` and ``model``; values become strings.

    Returns:
        The file's sha256.
    """
    missing = [key for key in REQUIRED_META if key not in meta]
    if missing:
        raise ValueError(f"predictions metadata needs {missing}")
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    pred_t = torch.as_tensor(np.asarray(pred), dtype=torch.int64)
    tensors = {
        "labels": labels_t,
        "pred": pred_t,
        "correct": (labels_t == pred_t).to(torch.uint8),
        "probs": torch.as_tensor(np.asarray(probs), dtype=torch.float32),
    }
    return save_tensors(path, tensors, {k: str(v) for k, v in meta.items()})


def load_predictions(path: Path) -> SavedPredictions:
    """Read a predictions file written by :func:`save_predictions`.

    Raises:
        EvaluationError: The file is missing or lacks a tensor or metadata key.
    """
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"{path}: no predictions here; run 'thawline stage evaluate' first")
    with safe_open(str(path), framework="pt") as f:
        meta = tensor_metadata(f)
        names = set(f.keys())
        missing = [n for n in ("labels", "pred", "correct", "probs") if n not in names]
        missing += [k for k in REQUIRED_META if k not in meta]
        if missing:
            raise EvaluationError(f"{path}: not a predictions file, it lacks {missing}")
        tensors = {name: f.get_tensor(name).numpy() for name in names}
    return SavedPredictions(
        labels=tensors["labels"],
        pred=tensors["pred"],
        correct=tensors["correct"].astype(bool),
        probs=tensors["probs"],
        meta=dict(meta),
    )
