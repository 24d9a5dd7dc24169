"""What turns uint8 images into a backbone's feature vector, shared by extraction and models.

``Preprocess`` is timm's eval transform on uint8 batches; ``PooledFeatures`` returns the pooled
pre-logits plus pooled outputs of hooked layers, concatenated, from one forward pass.
"""

from __future__ import annotations

import math
import threading
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from thawline.models.backbone import Backbone


@dataclass(frozen=True)
class Preprocess:
    """timm's eval transform (resize to size/crop_pct, centre crop, normalise) on uint8 batches."""

    size: int
    crop_pct: float
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augmentable: ClassVar[bool] = True  # training may flip and shift

    @classmethod
    def from_backbone(cls, backbone: Backbone, size: int | None, crop_pct: float | None):
        cfg = backbone.data_config
        return cls(
            size=size or int(cfg["input_size"][-1]),
            crop_pct=crop_pct or float(cfg.get("crop_pct") or 1.0),
            interpolation=str(cfg.get("interpolation", "bilinear")),
            mean=tuple(float(m) for m in cfg["mean"]),
            std=tuple(float(s) for s in cfg["std"]),
        )

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, 3, H, W]`` to uint8 ``[B, 3, size, size]``: resize, then centre crop.

        Runs in DataLoader workers; staying in uint8 (as PIL does) moves 4x fewer bytes
        between processes than float.
        """
        if images.device.type != "cpu":
            # torchvision's two uint8 passes exist on a CPU only; on CUDA it resizes bicubic
            # uint8 in one float pass, up to 21 levels apart next to edges: a model fine-tuned
            # on a GPU would see other pixels than its cached features and its CPU serving.
            return self.resize_float(images.float()).round().to(torch.uint8)
        scale = math.floor(self.size / self.crop_pct)
        mode = InterpolationMode(self.interpolation)
        x = TF.resize(images, [scale, scale], interpolation=mode, antialias=True)
        return TF.center_crop(x, [self.size, self.size])

    def resize_float(self, images: torch.Tensor) -> torch.Tensor:
        """:meth:`resize` for float ``[B, 3, H, W]`` holding 0-255 values (the ONNX graph's).

        torchvision's uint8 resize is two passes, width then height, each stored as uint8. One
        float pass differs from it by up to 25 levels next to sharp edges (bicubic rings, which
        the uint8 path clips and rounds after the first pass): 4.1 % mean feature error against
        the uint8 path on Fashion-MNIST at 64 px. The same two passes, each clamped and rounded
        (:func:`continuous_round`), agree with it to a level: 1.1 %.
        """
        scale = math.floor(self.size / self.crop_pct)
        mode = InterpolationMode(self.interpolation)
        x = images
        for size in ([x.shape[-2], scale], [scale, scale]):
            x = TF.resize(x, size, interpolation=mode, antialias=True)
            x = continuous_round(x).clamp(0, 255)
        return TF.center_crop(x, [self.size, self.size])

    def normalize(self, images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """uint8 to normalised ``dtype`` (on whatever device the batch is)."""
        mean = torch.tensor(self.mean, device=images.device).view(1, -1, 1, 1) * 255
        std = torch.tensor(self.std, device=images.device).view(1, -1, 1, 1) * 255
        return ((images.float() - mean) / std).to(dtype)

    def spec(self) -> dict[str, Any]:
        return asdict(self)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, 3, H, W]`` to the normalised float input of the model."""
        return self.normalize(self.resize(images))


def continuous_round(x: torch.Tensor, ramp: float = 0.05) -> torch.Tensor:
    """``x.round()``, except within ``ramp`` of a half, where it climbs linearly to the next
    integer. Runtimes compute the same float resize to ~1e-4 levels apart; a true round turns
    those that straddle a half into whole levels (1e-3 of probability in an ONNX parity check),
    this one into 1e-3 levels."""
    floor = x.floor()
    return floor + ((x - floor - 0.5 + ramp) / (2 * ramp)).clamp(0, 1)


def preprocess_for(backbone, size: int | None, crop_pct: float | None, prepared=None):
    """The input transform of ``backbone``: images resized and normalised, or text trimmed.

    ``prepared`` (a text store's manifest ``tokens`` entry) gives text its length and padding.
    """
    if backbone.data_config.get("modality") != "text":
        return Preprocess.from_backbone(backbone, size, crop_pct)
    from thawline.models.text_input import TextPreprocess

    tokens = prepared or {}
    return TextPreprocess(
        max_length=int(tokens.get("max_length", backbone.data_config["max_length"])),
        truncation=str(tokens.get("truncation", "head")),
        pad_id=int(tokens.get("pad_id", backbone.data_config["pad_id"])),
    )


def preprocess_from_spec(spec: dict[str, Any]):
    """Rebuild a saved model's input transform from its ``spec()``."""
    if spec.get("kind") == "text":
        from thawline.models.text_input import TextPreprocess

        return TextPreprocess(**spec)
    return Preprocess(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})


def is_text(preprocess) -> bool:
    """Whether an input transform takes tokens (``TextPreprocess``) rather than images."""
    return getattr(preprocess, "kind", "image") == "text"


def item_unit(preprocess) -> str:
    """What progress bars count: images, or documents."""
    return "doc" if is_text(preprocess) else "img"


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """Image batches in channels-last memory (faster convolutions); anything else as it is."""
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x


def pool(output: torch.Tensor) -> torch.Tensor:
    """Global-average-pool a hooked output: NCHW maps, [B, tokens, D] sequences, or vectors."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    if output.ndim == 4:
        return output.mean(dim=(2, 3))
    if output.ndim == 3:
        return output.mean(dim=1)
    return output.flatten(1)


class PooledFeatures(nn.Module):
    """Returns ``cat([pooled pre-logits, pooled hooked layers...])``.

    The hooks pool inside the forward pass, so TorchScript tracing records them too. What they
    capture is kept per thread: a served model answers concurrent requests from several threads,
    and one shared list mixed their layers (a 400, or worse, another request's features).
    """

    def __init__(self, backbone: Backbone, layers: list[str]):
        super().__init__()
        self.backbone = backbone
        self.layers = layers
        self._captured: dict[int, list[torch.Tensor]] = {}  # thread id -> pooled layers
        # A text backbone pools its layers itself, over the real tokens only (no hooks).
        self._own_layers = getattr(backbone, "data_config", {}).get("modality") == "text"
        modules = dict(backbone.model.named_modules())
        for name in [] if self._own_layers else layers:
            modules[name].register_forward_hook(self._capture)

    def _capture(self, _module: nn.Module, _inputs, output) -> None:
        self._captured.setdefault(threading.get_ident(), []).append(pool(output))

    def _hooked(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The pooled pre-logits and this thread's pooled hooked layers for ``x``."""
        if not self.layers:  # no hooks: no thread ids either (torch.compile cannot trace them)
            return pool(self.backbone.forward_features(x)), []
        me = threading.get_ident()
        self._captured.pop(me, None)
        try:
            pooled = pool(self.backbone.forward_features(x))
            return pooled, self._captured.get(me, [])
        finally:
            self._captured.pop(me, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._own_layers:
            return self.backbone.forward_features(x, self.layers)
        pooled, captured = self._hooked(x)
        return torch.cat([pooled, *captured], dim=1)

    def widths(self, x: torch.Tensor) -> list[int]:
        if self._own_layers:
            return [self.backbone.num_features] * (1 + len(self.layers))
        pooled, captured = self._hooked(x)
        return [t.shape[1] for t in (pooled, *captured)]
