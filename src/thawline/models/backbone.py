"""One backbone interface for timm and torchvision models, in timm's vocabulary.

``create_backbone("timm:tf_efficientnet_lite0", "packaged")`` returns a :class:`Backbone` with:

- ``forward_features(x)``: pooled pre-logit features ``[B, num_features]``;
- ``forward(x)``: the original ImageNet logits (when the weights have them);
- ``data_config``: input size, interpolation, mean/std and crop from the weights, never constants;
- ``feature_layers()``: module names for forward hooks (one per stage, stem to top);
- ``layer_groups()``: ordered parameter-name groups, stem first, for freezing and per-group LRs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from thawline.config import Backbone as BackboneConfig
from thawline.models.torchvision_groups import family_of, last_linear, torchvision_groups
from thawline.models.weights import (
    WeightsError,
    hub_reachable,
    load_by_name,
    load_by_position,
    packaged_lite0_path,
    read_state_dict,
)


class Backbone(nn.Module):
    """A pretrained model with a uniform interface; see the module docstring."""

    def __init__(
        self,
        name: str,
        model: nn.Module,
        data_config: dict[str, Any],
        num_features: int,
        groups: list[list[str]],
        feature_layers: list[str],
        classifier: nn.Module | None = None,
    ):
        super().__init__()
        self.name = name
        self.model = model
        self.classifier = classifier if classifier is not None else nn.Identity()
        self.data_config = data_config
        self.num_features = num_features
        self._groups = groups
        self._feature_layers = feature_layers

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self.model, "forward_head"):  # timm
            return self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        return self.model(x)  # torchvision, with its final Linear replaced by Identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self.model, "forward_head"):
            return self.model(x)
        return self.classifier(self.model(x))

    def feature_layers(self) -> list[str]:
        return list(self._feature_layers)

    def layer_groups(self) -> list[list[str]]:
        """Parameter names per group, stem to top (the ImageNet classifier excluded)."""
        names = [n for n, _ in self.model.named_parameters()]
        out: list[list[str]] = []
        for prefixes in self._groups:
            out.append([n for n in names if any(_under(n, p) for p in prefixes)])
        claimed = {n for g in out for n in g}
        rest = [n for n in names if n not in claimed and not self._is_classifier(n)]
        if rest:  # e.g. a final norm no family rule names: it belongs with the top group
            out[-1].extend(rest)
        return [g for g in out if g]

    def _is_classifier(self, param: str) -> bool:
        head = getattr(self.model, "pretrained_cfg", {}).get("classifier")
        return bool(head) and _under(param, head)


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def create_backbone(cfg: BackboneConfig) -> Backbone:
    """Build the configured backbone with its weights (see ``backbone.weights`` in params.yaml).

    Raises:
        WeightsError: Weights that cannot be found, fetched offline, or matched.
    """
    library, _, name = cfg.name.partition(":")
    if library == "timm":
        return _timm_backbone(name, cfg.weights)
    return _torchvision_backbone(name, cfg.weights)


def _timm_backbone(name: str, weights: str) -> Backbone:
    import timm
    from timm.data import resolve_data_config
    from timm.models import group_parameters

    pretrained = weights == "imagenet"
    if pretrained and not hub_reachable("huggingface.co"):
        # The HF client would retry for about a minute; look in the local cache only.
        import huggingface_hub.constants

        huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        model = timm.create_model(name, pretrained=pretrained)
    except Exception as err:
        if not pretrained:
            raise
        raise WeightsError(
            f"backbone timm:{name}: ImageNet weights are not in the local cache and the hub is "
            f"unreachable ({type(err).__name__}). Go online once, or use backbone.weights: "
            "packaged (EfficientNet-Lite0) or a local .safetensors file"
        ) from None
    if weights == "packaged":
        path = packaged_lite0_path()
        load_by_position(model, read_state_dict(path), str(path))
    elif weights not in ("imagenet", "none"):
        load_by_name(model, read_state_dict(Path(weights)), weights)
    data_config = resolve_data_config({}, model=model)
    matcher = model.group_matcher(coarse=True)
    grouped = group_parameters(model, matcher)
    head = model.pretrained_cfg.get("classifier", "")
    groups = [
        [n for n in names if not (head and _under(n, head))] for _, names in sorted(grouped.items())
    ]
    layers = [info["module"] for info in getattr(model, "feature_info", [])]
    return Backbone(
        f"timm:{name}", model, data_config, model.num_features, [g for g in groups if g], layers
    )


def _torchvision_backbone(name: str, weights: str) -> Backbone:
    import torchvision

    weight_enum = None
    if weights == "imagenet":
        weight_enum = torchvision.models.get_model_weights(name).DEFAULT
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weight_enum.url).name
        if not cached.is_file() and not hub_reachable("download.pytorch.org"):
            raise WeightsError(
                f"backbone torchvision:{name}: ImageNet weights are not in {cached.parent} and "
                "download.pytorch.org is unreachable. Go online once, or use a local weights "
                "file (backbone.weights: path/to/file.safetensors)"
            )
    try:
        model = torchvision.models.get_model(name, weights=weight_enum)
    except Exception as err:
        raise WeightsError(
            f"backbone torchvision:{name}: ImageNet weights could not be downloaded "
            f"({type(err).__name__}: {err}). Go online once (they are cached under "
            "~/.cache/torch), or use a local weights file"
        ) from None
    if weights not in ("imagenet", "none"):
        load_by_name(model, read_state_dict(Path(weights)), weights)
    head_name = last_linear(model)
    classifier = model.get_submodule(head_name)
    model.set_submodule(head_name, nn.Identity())
    groups = torchvision_groups(family_of(name), model, head_name)
    data_config = _torchvision_data_config(weight_enum)
    return Backbone(
        f"torchvision:{name}",
        model,
        data_config,
        classifier.in_features,
        groups,
        _hook_points(model, groups),
        classifier=classifier,
    )


def _hook_points(model: nn.Module, groups: list[list[str]]) -> list[str]:
    """The last module of every group above the stem: one hook point per stage."""
    modules = dict(model.named_modules())
    return [g[-1] for g in groups[1:] if g[-1] in modules]


def _torchvision_data_config(weight_enum: Any) -> dict[str, Any]:
    """timm-style data config from torchvision's weights (ImageNet defaults without weights)."""
    crop, resize, mean, std, interp = (
        224,
        256,
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
        "bilinear",
    )
    if weight_enum is not None:
        t = weight_enum.transforms()
        crop, resize = t.crop_size[0], t.resize_size[0]
        mean, std, interp = tuple(t.mean), tuple(t.std), t.interpolation.value
    return {
        "input_size": (3, crop, crop),
        "interpolation": interp,
        "mean": tuple(mean),
        "std": tuple(std),
        "crop_pct": crop / resize,
    }


def weights_sha256(model: nn.Module) -> str:
    """A hash of every parameter and buffer: the backbone's identity in fingerprints."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


__all__ = ["Backbone", "WeightsError", "create_backbone", "weights_sha256"]
