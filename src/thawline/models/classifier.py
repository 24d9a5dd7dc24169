"""The complete model: backbone + head, from uint8 images to logits, saved as safetensors.

Saved and loaded (safetensors + JSON, no pickle) by :mod:`thawline.models.storage`.
"""

from __future__ import annotations

import torch
from torch import nn

from thawline.config import BackboneParams
from thawline.models.backbone import create_backbone
from thawline.models.head import Head
from thawline.models.preprocess import PooledFeatures, Preprocess, channels_last, is_text


class Classifier(nn.Module):
    """uint8 images ``[B, 3, S, S]`` (the stored size), or token ids and masks ``[B, 2, L]``,
    to logits ``[B, classes]``, divided by the spec's ``temperature`` when there is one."""

    def __init__(self, features: PooledFeatures, head: Head, preprocess: Preprocess, spec: dict):
        super().__init__()
        self.features = features
        self.head = head
        self.preprocess = preprocess
        self.spec = spec

    @property
    def classes(self) -> list[str]:
        return list(self.spec["classes"])

    @property
    def image_size(self) -> int:
        return int(self.spec["image_size"])

    @property
    def temperature(self) -> float:
        """What the logits are divided by: the calibration ``evaluate`` fitted (1: none)."""
        return float(self.spec.get("temperature", 1.0))

    @property
    def modality(self) -> str:
        return "text" if is_text(self.preprocess) else "image"

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if not x.is_floating_point():  # raw images (resize, crop, normalise) or tokens (trim)
            x = self.preprocess(x)
        return self.network(x)

    def network(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed input (normalised images, trimmed tokens) to logits."""
        logits = self.head(self.features(channels_last(x)))
        # A spec field, not a buffer: models saved before calibration load unchanged.
        return logits if self.temperature == 1.0 else logits / self.temperature


def build_classifier(
    backbone_name: str,
    weights: str,
    layers: list[str],
    preprocess: Preprocess,
    head: Head,
    classes: list[str],
    image_size: int | None,
    pooling: str = "mean",
) -> Classifier:
    """Assemble a classifier from a backbone (with its weights) and a trained head."""
    backbone = create_backbone(BackboneParams(name=backbone_name, weights=weights, pooling=pooling))
    spec = {
        "backbone": backbone_name,
        "layers": list(layers),
        "preprocess": preprocess.spec(),
        "head": head.spec(),
        "classes": list(classes),
        "image_size": image_size,
    }
    if backbone_name.startswith("hf:"):
        spec["pooling"] = pooling
    return Classifier(PooledFeatures(backbone, list(layers)), head, preprocess, spec)
