"""Validation of a classifier on uint8 images, its pooled features, and which epoch is the best."""

from __future__ import annotations

import torch
from torch import nn

from thawline.devices import Precision, autocast
from thawline.models.classifier import Classifier
from thawline.models.preprocess import channels_last, item_unit
from thawline.models.tta import tta_softmax
from thawline.progress import progress_bar

FP32 = Precision(None)

PREDICT_BATCH = 256  # images per forward pass when scoring a split


@torch.inference_mode()
def predict_logits(
    model: Classifier,
    images: torch.Tensor,
    *,
    batch_size: int = PREDICT_BATCH,
    precision: Precision = FP32,
) -> torch.Tensor:
    """float32 logits of ``model`` (in eval mode, on its device) for uint8 images, on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    outputs = []
    for chunk in images.split(batch_size):
        with autocast(device, precision):
            outputs.append(model(chunk.to(device)).float().cpu())
    return torch.cat(outputs)


@torch.inference_mode()
def logits_and_tta(
    model: Classifier,
    images: torch.Tensor,
    kind: str,
    *,
    batch_size: int = PREDICT_BATCH,
    precision: Precision = FP32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`predict_logits`'s logits and the softmax averaged over the TTA views of ``kind``
    (models/tta.py), both float32 on the CPU, in one pass: the plain view runs once."""
    model.eval()
    device = next(model.parameters()).device
    logits, probs = [], []
    for chunk in images.split(batch_size):
        x = model.preprocess(chunk.to(device))
        with autocast(device, precision):
            plain = model.network(x).float()
            probs.append(tta_softmax(model.network, x, kind, plain).cpu())
        logits.append(plain.cpu())
    return torch.cat(logits), torch.cat(probs)


@torch.inference_mode()
def pooled_features(
    model: Classifier,
    images: torch.Tensor,
    *,
    batch_size: int = 256,
    precision: Precision = FP32,
    progress: bool = False,
) -> torch.Tensor:
    """float32 ``[N, D]``: what ``model``'s head sees for uint8 images, computed exactly as
    :func:`predict_logits` computes it (eval mode, the same preprocessing and precision)."""
    model.eval()
    device = next(model.parameters()).device
    outputs = []
    unit = item_unit(model.preprocess)
    bar = progress_bar(total=len(images), desc="features", unit=unit, disable=not progress)
    with bar:
        for chunk in images.split(batch_size):
            x = channels_last(model.preprocess(chunk.to(device)))
            with autocast(device, precision):
                outputs.append(model.features(x).float().cpu())
            bar.update(len(chunk))
    return torch.cat(outputs)


def validation_sums(
    model: Classifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int = 128,
    precision: Precision = FP32,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """``[summed loss, correct, count]`` of ``model`` on uint8 images (eval preprocessing).

    Sums rather than means, so that the parts scored by several processes add up exactly.
    """
    logits = predict_logits(model, images, batch_size=batch_size, precision=precision)
    # collectives need the sums where the model is (nccl)
    return logit_sums(logits, labels, label_smoothing, next(model.parameters()).device)


def logit_sums(
    logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float, device: torch.device
) -> torch.Tensor:
    """:func:`validation_sums` of logits already computed, on ``device``."""
    labels = labels.long()
    loss = nn.functional.cross_entropy(
        logits, labels, reduction="sum", label_smoothing=label_smoothing
    )
    correct = (logits.argmax(1) == labels).sum()
    return torch.stack([loss.double(), correct.double(), torch.tensor(len(labels)).double()]).to(
        device
    )


def metrics_from_sums(sums: torch.Tensor) -> dict[str, float]:
    """Validation loss and accuracy from (possibly all-reduced) :func:`validation_sums`."""
    loss, correct, count = sums.tolist()
    return {"val_loss": loss / count, "val_accuracy": correct / count}


def improved(metrics: dict[str, float], best: dict[str, float]) -> bool:
    """Better validation accuracy, or equal accuracy and lower loss (always, without val)."""
    if not best or "val_accuracy" not in metrics:
        return True
    if metrics["val_accuracy"] != best["val_accuracy"]:
        return metrics["val_accuracy"] > best["val_accuracy"]
    return metrics["val_loss"] < best["val_loss"]
