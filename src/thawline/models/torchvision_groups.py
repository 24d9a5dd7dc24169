"""Ordered layer groups for torchvision families, so freezing, hooks and LRs work as with timm.

Each family maps to a list of groups (stem first, last block last); a group is a list of module
name prefixes. Families not listed fall back to the model's top-level children.
"""

from __future__ import annotations

from torch import nn


def torchvision_groups(family: str, model: nn.Module, classifier: str) -> list[list[str]]:
    """Module-name prefixes of each layer group, stem to top, excluding the classifier."""
    if family in ("resnet", "resnext", "wide_resnet", "regnet"):
        if hasattr(model, "layer1"):
            return [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]]
        return [["stem"], *[[f"trunk_output.{n}"] for n, _ in model.trunk_output.named_children()]]
    if family == "vgg":
        return [*_split_at_pools(model.features, "features"), _pre_logit_layers(model, classifier)]
    if family == "densenet":
        blocks: list[list[str]] = [["features.conv0", "features.norm0"]]
        for name, _ in model.features.named_children():
            if name.startswith("denseblock"):
                blocks.append([f"features.{name}"])
            elif name.startswith(("transition", "norm5")):
                blocks[-1].append(f"features.{name}")
        return blocks
    convnets = ("mobilenet", "efficientnet", "convnext", "mnasnet", "shufflenet")
    if family in convnets and hasattr(model, "features"):
        groups = [[f"features.{n}"] for n, _ in model.features.named_children()]
        extra = _pre_logit_layers(model, classifier)
        return groups + ([extra] if extra else [])
    if family in ("vit", "swin", "maxvit") and hasattr(model, "encoder"):
        stem = ["conv_proj", "class_token", "encoder.pos_embedding"]
        layers = [[f"encoder.layers.{n}"] for n, _ in model.encoder.layers.named_children()]
        return [stem, *layers, ["encoder.ln"]]
    return [[n] for n, _ in model.named_children() if n != classifier.split(".")[0]]


def family_of(name: str) -> str:
    for family in (
        "wide_resnet", "resnext", "resnet", "regnet", "vgg", "densenet", "mobilenet",
        "efficientnet", "convnext", "mnasnet", "shufflenet", "vit", "swin", "maxvit",
    ):  # fmt: skip
        if name.startswith(family):
            return family
    return "other"


def last_linear(model: nn.Module) -> str:
    """The name of the final nn.Linear: the classifier whose input is the pre-logits."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ValueError("this torchvision model has no nn.Linear classifier to replace")
    return names[-1]


def _split_at_pools(features: nn.Sequential, prefix: str) -> list[list[str]]:
    groups: list[list[str]] = [[]]
    for name, module in features.named_children():
        groups[-1].append(f"{prefix}.{name}")
        if isinstance(module, nn.MaxPool2d):
            groups.append([])
    return [g for g in groups if g]


def _pre_logit_layers(model: nn.Module, classifier: str) -> list[str]:
    """Pretrained layers inside the classifier block that sit before the final Linear."""
    parent, _, last = classifier.rpartition(".")
    if not parent:
        return []
    block = model.get_submodule(parent)
    return [f"{parent}.{n}" for n, m in block.named_children() if n != last and _has_params(m)]


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())
