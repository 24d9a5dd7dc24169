"""Checks of names the config refers to: that a backbone and a torchvision dataset exist."""

from __future__ import annotations


def check_backbone_name(name: str) -> None:
    library, _, model = name.partition(":")
    if library not in ("timm", "torchvision") or not model:
        raise ValueError(
            f"backbone.name: '{name}' must be 'timm:<model>' or 'torchvision:<model>', "
            "e.g. timm:tf_efficientnet_lite0 or torchvision:resnet18"
        )
    if library == "timm":
        import timm

        if not timm.is_model(model):
            close = timm.list_models(f"*{model.split('.')[0][:6]}*")[:5]
            raise ValueError(f"backbone.name: timm has no model '{model}'; similar: {close}")
    else:
        import torchvision

        known = torchvision.models.list_models(module=torchvision.models)
        if model not in known:
            close = [m for m in known if m.startswith(model[:3])][:5]
            raise ValueError(
                f"backbone.name: torchvision has no classification model '{model}'; "
                f"similar: {close}"
            )


def check_torchvision_dataset(name: str | None) -> None:
    import torchvision.datasets

    if not name or not isinstance(getattr(torchvision.datasets, name, None), type):
        raise ValueError(
            f"data.name: '{name}' is not a dataset class in torchvision.datasets "
            "(e.g. CIFAR10, FashionMNIST, Flowers102)"
        )
