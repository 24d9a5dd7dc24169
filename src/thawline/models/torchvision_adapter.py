"""The torchvision adapter: any classification model of ``torchvision.models``, made to speak the
protocol: its final ``nn.Linear`` becomes the pre-logits point, its layer groups come from
:mod:`thawline.models.torchvision_groups` and its preprocessing from the weights' transforms.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from thawline.errors import WeightsError
from thawline.models.backbone import Backbone
from thawline.models.torchvision_groups import family_of, last_linear, torchvision_groups
from thawline.models.weights import hub_reachable, load_by_name, read_state_dict


def torchvision_backbone(name: str, weights: str) -> Backbone:
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
