"""The timm adapter: any ``timm.list_models()`` name, used as timm builds it.

timm models already speak the protocol's language: ``forward_features`` + ``forward_head(
pre_logits=True)``, ``group_matcher`` (layer groups), ``feature_info`` (hook points) and
``resolve_data_config`` (preprocessing from the weights).
"""

from __future__ import annotations

from pathlib import Path

from thawline.errors import WeightsError
from thawline.models.backbone import Backbone, under
from thawline.models.weights import (
    hub_reachable,
    load_by_name,
    load_by_position,
    packaged_lite0_path,
    read_state_dict,
)


def timm_backbone(name: str, weights: str) -> Backbone:
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
        [n for n in names if not (head and under(n, head))] for _, names in sorted(grouped.items())
    ]
    layers = [info["module"] for info in getattr(model, "feature_info", [])]
    return Backbone(
        f"timm:{name}", model, data_config, model.num_features, [g for g in groups if g], layers
    )
