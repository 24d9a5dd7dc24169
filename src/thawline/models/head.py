"""The classifier head trained on cached features: standardise, then linear or MLP (saved and
loaded by :mod:`thawline.models.storage`).

The feature mean and std are buffers of the head, so the head is the whole mapping from the
backbone's (pooled, concatenated) features to logits, wherever it is used.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Head(nn.Module):
    """``(features - mean) / std`` followed by a linear layer or an MLP."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        type: str = "linear",
        hidden: list[int] | tuple[int, ...] = (512,),
        dropout: float = 0.0,
    ):
        super().__init__()
        self.config = {
            "in_features": in_features,
            "num_classes": num_classes,
            "type": type,
            "hidden": list(hidden),
            "dropout": dropout,
        }
        self.register_buffer("mean", torch.zeros(in_features))
        self.register_buffer("std", torch.ones(in_features))
        layers: list[nn.Module] = []
        width = in_features
        if type == "mlp":
            for size in hidden:
                layers += [nn.Dropout(dropout), nn.Linear(width, size), nn.GELU()]
                width = size
        layers += [nn.Dropout(dropout), nn.Linear(width, num_classes)]
        self.net = nn.Sequential(*layers)

    def set_standardisation(self, features: torch.Tensor) -> None:
        """Standardise with the training features' statistics.

        The std is floored at a tenth of the mean std: a near-constant feature carries no
        signal, and dividing by its tiny std would blow the fp16/bf16 rounding of cached
        features up into large inputs that differ from what the fp32 model computes later.
        """
        features = features.float()
        std = features.std(dim=0)
        floor = max(0.1 * float(std.mean()), 1e-6)
        self.mean.copy_(features.mean(dim=0))
        self.std.copy_(std.clamp(min=floor))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net((features.float() - self.mean) / self.std)

    def spec(self) -> dict[str, Any]:
        return dict(self.config)

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Head:
        return cls(**spec)
