"""Freezing and thawing layer groups, and one optimizer param group per layer group.

The backbone's ordered layer groups (stem first, top last) plus the head make ``n + 1`` optimizer
param groups, all created up front: a resumed run or a scheduler never meets a group that appears
mid-run. A phase unfreezes the top ``k`` groups; frozen groups get ``requires_grad=False`` (no
gradient, so AdamW skips them) and an LR of 0 (so not even weight decay could move them), and
their BatchNorm layers stay in eval mode so their running statistics do not drift. With
``freeze_bn`` (the default) every BatchNorm layer stays in eval mode: a head fit on cached
features saw the backbone with its running statistics, and switching a thawed group to batch
statistics changes those features under it (docs/benchmarks.md, "Never worse").
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from thawline.config import FinetuneParams
from thawline.models.classifier import Classifier
from thawline.models.lora import has_lora, inject_lora, is_adapter
from thawline.training.phases import Phase

log = logging.getLogger(__name__)


def param_groups(model: Classifier, weight_decay: float) -> list[dict]:
    """One optimizer param group per backbone layer group, stem first, plus one for the head.

    Every group starts with ``lr=1.0``, so the scheduler's multiplier is the absolute LR. The
    backbone's ImageNet classifier is in no layer group and no param group: it never runs.
    """
    named = dict(model.features.backbone.model.named_parameters())
    groups = [[named[name] for name in names] for names in layer_names(model)]
    groups.append(list(model.head.parameters()))
    return [{"params": g, "lr": 1.0, "weight_decay": weight_decay} for g in groups]


def layer_names(model: Classifier) -> list[list[str]]:
    """The backbone's layer groups (parameter names of ``backbone.model``), stem first."""
    return model.features.backbone.layer_groups()


def apply_phase(
    model: Classifier, phase: Phase, *, freeze_bn: bool = False, train_depthwise: bool = True
) -> None:
    """Make the top ``phase.groups`` layer groups and the head trainable; freeze the rest.

    Call after ``model.train()``: BatchNorm of frozen groups (all of them with ``freeze_bn``)
    goes back to eval mode, so its running statistics stay as they are. Without
    ``train_depthwise`` the depthwise convolutions of thawed groups stay frozen too.
    """
    backbone = model.features.backbone.model
    names = layer_names(model)
    trainable = {n for g in names[len(names) - phase.groups :] for n in g}
    if has_lora(backbone):  # thaw: lora: a thawed layer trains its adapters, not its weights
        trainable = {n for n in trainable if is_adapter(n)}
    if not train_depthwise:
        trainable -= depthwise_names(backbone)
    for name, param in backbone.named_parameters():
        param.requires_grad_(name in trainable)
    model.head.requires_grad_(True)
    for module_name, module in backbone.named_modules():
        if not isinstance(module, nn.modules.batchnorm._BatchNorm):
            continue
        own = [f"{module_name}.{n}" for n, _ in module.named_parameters(recurse=False)]
        frozen = not own or not all(n in trainable for n in own)
        if freeze_bn or frozen:
            module.eval()


def depthwise_names(module: nn.Module) -> set[str]:
    """Parameter names of the depthwise convolutions in ``module`` (one filter per channel)."""
    return {
        f"{name}.{n}"
        for name, conv in module.named_modules()
        if isinstance(conv, nn.Conv2d) and 1 < conv.groups == conv.in_channels
        for n, _ in conv.named_parameters(recurse=False)
    }


def unfrozen_groups(model: Classifier) -> list[int]:
    """Indices (stem = 0) of the layer groups whose parameters currently require grad."""
    named = dict(model.features.backbone.model.named_parameters())
    return [
        i for i, g in enumerate(layer_names(model)) if g and any(named[n].requires_grad for n in g)
    ]


def release(model: Classifier) -> None:
    """Every parameter trainable again (the state a saved model is loaded in)."""
    for param in model.parameters():
        param.requires_grad_(True)


def set_attention_dropout(model: nn.Module, p: float) -> int:
    """Set the dropout on attention weights of every attention module in ``model`` to ``p``;
    returns how many were set (0 for a CNN).

    transformers' BERT family and DistilBERT keep it as the attention module's ``dropout`` and
    pass its ``p`` to scaled_dot_product_attention in training; timm's ViTs as ``attn_drop``.
    The dropouts after the projections and on the embeddings are the model's own and stay.
    """
    count = 0
    for module in model.modules():
        if "Attention" not in type(module).__name__:
            continue
        for attr in ("dropout", "attn_drop", "attention_dropout"):
            if isinstance(drop := getattr(module, attr, None), nn.Dropout):
                drop.p, count = p, count + 1
    return count


def bn_running_stats(module: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every BatchNorm's running mean/var (for checks that frozen BN did not move)."""
    return {
        name: buf.detach().clone()
        for name, buf in module.named_buffers()
        if name.endswith(("running_mean", "running_var"))
    }


def add_adapters(model: Classifier, opts: FinetuneParams) -> None:
    """``thaw: lora``: LoRA adapters on every encoder layer (phases choose which ones train)."""
    backbone = model.features.backbone
    torch.manual_seed(0)  # the adapters' A matrices; B starts at zero, so outputs do not move
    count = inject_lora(backbone.model, backbone.layers_path, opts.lora_rank, opts.lora_alpha,
                        opts.lora_dropout)  # fmt: skip
    log.info("finetune: LoRA adapters (rank %d) on %d projections; the layers' own weights stay "
             "frozen, and the adapters are merged into them at the end", opts.lora_rank,
             count)  # fmt: skip
