"""Class-activation maps (Grad-CAM, Selvaraju et al. 2017) through captum's ``LayerGradCam``.

The layer is the backbone's last spatial output before global pooling (EfficientNet's ``bn2``,
a ResNet's ``layer4``), found by running one batch and watching the model's top-level children,
so no family needs a rule. Maps are taken for the class the model *predicted*: what it looked at
to say so. captum over pytorch-grad-cam: captum needs only torch and matplotlib, where
``grad-cam`` pulls OpenCV (a GUI build that wants libGL on a headless machine).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

BATCH = 32


@dataclass
class ClassActivations:
    """Grad-CAM of some images: the images as the model saw them and one map per image."""

    images: np.ndarray  # uint8 [K, 3, S, S]: resized and cropped as the model's input
    maps: np.ndarray  # float32 [K, S, S] in [0, 1] (each map scaled to its own maximum)
    targets: np.ndarray  # int64 [K]: the class each map explains (the predicted one)
    layer: str  # the module the maps come from


def last_spatial_layer(model: nn.Module, example: torch.Tensor) -> str:
    """The name of the backbone's last top-level module with a spatial output (not a pooling).

    Raises:
        ValueError: The backbone has no spatial output (a transformer on tokens).
    """
    net = model.features.backbone.model
    seen: list[str] = []

    def watch(name: str):
        def hook(_module, _inputs, output) -> None:
            if isinstance(output, torch.Tensor) and output.ndim == 4:
                seen.append(name)

        return hook

    hooks = [
        child.register_forward_hook(watch(name))
        for name, child in net.named_children()
        if "pool" not in type(child).__name__.lower()  # a pooled map is 1x1: no picture left
    ]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    if not seen:
        raise ValueError(f"{type(net).__name__}: no spatial layer for class-activation maps")
    return seen[-1]


def grad_cam(model: nn.Module, images: torch.Tensor, targets: np.ndarray | None = None):
    """Grad-CAM of uint8 images ``[K, 3, H, W]`` (the stored size) for ``targets`` (default:
    the predicted classes).

    Returns:
        :class:`ClassActivations`, maps upsampled (bilinear) to the model's input size.
    """
    from captum.attr import LayerAttribution, LayerGradCam

    model = model.float().eval()
    preprocess = model.preprocess
    seen = preprocess.resize(images)  # uint8, as the model sees them (before normalising)
    name = last_spatial_layer(model, images[:1])
    layer = dict(model.features.backbone.model.named_modules())[name]
    cam = LayerGradCam(model.network, layer)
    maps, chosen = [], []
    for start in range(0, len(images), BATCH):
        x = preprocess.normalize(seen[start : start + BATCH]).requires_grad_(True)
        with torch.no_grad():
            predicted = model.network(x).argmax(1)
        target = predicted if targets is None else torch.as_tensor(targets[start : start + BATCH])
        attribution = cam.attribute(x, target=target, relu_attributions=True)
        up = LayerAttribution.interpolate(attribution, tuple(x.shape[-2:]), "bilinear")
        maps.append(up.detach()[:, 0])
        chosen.append(target)
    stacked = torch.cat(maps) if maps else torch.zeros(0, *seen.shape[-2:])
    peak = stacked.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
    return ClassActivations(
        images=seen.numpy(),
        maps=(stacked / peak).clamp(0, 1).numpy().astype(np.float32),
        targets=torch.cat(chosen).numpy().astype(np.int64) if chosen else np.zeros(0, np.int64),
        layer=name,
    )


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """A uint8 ``[3, S, S]`` image with a ``[S, S]`` map in matplotlib's 'jet' over it:
    ``[S, S, 3]`` uint8."""
    from matplotlib import colormaps

    coloured = colormaps["jet"](heat)[..., :3]
    base = np.transpose(image, (1, 2, 0)).astype(np.float32) / 255
    return np.clip(((1 - alpha) * base + alpha * coloured) * 255, 0, 255).astype(np.uint8)
