"""The complete model: backbone + head, from uint8 images to logits, saved as safetensors.

A saved model is a folder::

    model.safetensors   every parameter and buffer (no pickle)
    model.json          how to rebuild it: backbone name, hooked layers, preprocessing,
                        head spec, class names and the stored image size

Loading rebuilds the architecture from ``model.json`` with random init (no download), then loads
the tensors, so loading never unpickles anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from thawline.config import Backbone as BackboneConfig
from thawline.files import atomic_path, write_json
from thawline.models.backbone import create_backbone
from thawline.models.head import Head
from thawline.models.preprocess import PooledFeatures, Preprocess

WEIGHTS, SPEC = "model.safetensors", "model.json"


class Classifier(nn.Module):
    """uint8 images ``[B, 3, S, S]`` (the stored size) to logits ``[B, classes]``."""

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

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        if x.dtype == torch.uint8:  # raw images: resize, crop and normalise as in extraction
            x = self.preprocess(x)
        return self.head(self.features(x.contiguous(memory_format=torch.channels_last)))


def build_classifier(
    backbone_name: str,
    weights: str,
    layers: list[str],
    preprocess: Preprocess,
    head: Head,
    classes: list[str],
    image_size: int,
) -> Classifier:
    """Assemble a classifier from a backbone (with its weights) and a trained head."""
    backbone = create_backbone(BackboneConfig(name=backbone_name, weights=weights))
    spec = {
        "backbone": backbone_name,
        "layers": list(layers),
        "preprocess": preprocess.spec(),
        "head": head.spec(),
        "classes": list(classes),
        "image_size": image_size,
    }
    return Classifier(PooledFeatures(backbone, list(layers)), head, preprocess, spec)


def save_classifier(model: Classifier, folder: Path) -> Path:
    """Write ``model.safetensors`` and ``model.json`` into ``folder`` (atomically, each)."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(folder / WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"format": "thawline-classifier"})
    write_json(folder / SPEC, model.spec)
    return folder


def load_classifier(folder: Path) -> Classifier:
    """Rebuild a saved classifier (random init, no download) and load its tensors."""
    spec: dict[str, Any] = json.loads((Path(folder) / SPEC).read_text())
    preprocess = Preprocess(**{k: _tuple(v) for k, v in spec["preprocess"].items()})
    model = build_classifier(
        spec["backbone"], "none", spec["layers"], preprocess, Head.from_spec(spec["head"]),
        spec["classes"], spec["image_size"],
    )  # fmt: skip
    model.load_state_dict(load_file(str(Path(folder) / WEIGHTS)))
    return model.eval()


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value
