"""One backbone protocol for every pretrained model, in timm's vocabulary, and its adapters.

``create_backbone(BackboneParams(name="timm:tf_efficientnet_lite0", weights="packaged"))`` asks
the adapter of the name's library (``adapters()``: timm, torchvision and Hugging Face
transformers, ``hf_adapter.py``) for a :class:`FeatureBackbone`:

- ``data_config``: the preprocessing spec from the weights, never constants (images: input size,
  interpolation, mean/std and crop; text: the maximum length and the padding id);
- ``forward_features(x)``: pooled features ``[B, num_features]`` (pre-logits for images, the
  pooled last hidden state for text);
- ``feature_layers()``: named hook points, bottom to top (stages; encoder layers);
- ``layer_groups()``: ordered parameter-name groups, bottom first, for freezing and per-group LRs.

Everything above the models (extraction, the cache, heads, fine-tuning) uses only this protocol.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch
from torch import nn

from thawline.config import BackboneParams
from thawline.files import tensors_sha256


class FeatureBackbone(Protocol):
    """What every adapter gives the rest of thawline (see the module docstring)."""

    name: str
    data_config: dict[str, Any]
    num_features: int
    model: nn.Module  # the wrapped model: hook points and layer groups name its modules

    def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...

    def feature_layers(self) -> list[str]: ...

    def layer_groups(self) -> list[list[str]]: ...


class Backbone(nn.Module):
    """A :class:`FeatureBackbone` over an image model (timm's, or torchvision's adapted)."""

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
            out.append([n for n in names if any(under(n, p) for p in prefixes)])
        claimed = {n for g in out for n in g}
        rest = [n for n in names if n not in claimed and not self._is_classifier(n)]
        if rest:  # e.g. a final norm no family rule names: it belongs with the top group
            out[-1].extend(rest)
        return [g for g in out if g]

    def forward_stages(self) -> list[tuple[str, nn.Module]] | None:
        """``forward_features`` as named modules run one after the other, bottom first (timm
        CNNs: the stem, each block, the head convolution), or None where the model is not such
        a chain (checked once, numerically, on a small input in eval mode). The activation
        cache of thaw phases cuts the chain where the frozen part ends."""
        if not hasattr(self.model, "forward_head"):
            return None  # torchvision: its forward pools and flattens in one piece
        skip = {"global_pool", "classifier", "head", "fc", "head_drop", "pre_logits"}
        chain: list[tuple[str, nn.Module]] = []
        for name, child in self.model.named_children():
            if name in skip:
                continue
            if isinstance(child, nn.Sequential) and name in ("blocks", "stages", "layers"):
                chain.extend((f"{name}.{i}", block) for i, block in enumerate(child))
            else:
                chain.append((name, child))
        if getattr(self, "_chain_ok", None) is None:  # the structure never changes: check once
            self._chain_ok = self._chain_matches(chain)
        return chain if self._chain_ok else None

    def stage_input(self, x: torch.Tensor) -> torch.Tensor:
        """The model input as the chain's first state (channels-last, as ``network`` runs it)."""
        return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x

    def stage_output(self, h: torch.Tensor) -> torch.Tensor:
        """The chain's last state to pre-logits (timm's ``forward_head``)."""
        return self.model.forward_head(h, pre_logits=True)

    def _chain_matches(self, chain: list[tuple[str, nn.Module]]) -> bool:
        if getattr(self.model, "grad_checkpointing", False):
            return False
        size = int(self.data_config.get("input_size", (3, 64, 64))[-1])
        try:
            with kept_modes([self.model]):
                self.model.eval()
                with torch.random.fork_rng(devices=[]), torch.inference_mode():
                    torch.manual_seed(0)
                    device = next(self.model.parameters()).device  # the check runs where it is
                    x = torch.randn(2, 3, min(size, 64), min(size, 64)).to(device)
                    expected = self.model.forward_features(x)
                    for _, module in chain:
                        x = module(x)
            return x.shape == expected.shape and torch.allclose(x, expected, atol=1e-4)
        except (RuntimeError, TypeError, ValueError):
            return False

    def _is_classifier(self, param: str) -> bool:
        head = getattr(self.model, "pretrained_cfg", {}).get("classifier")
        return bool(head) and under(param, head)


def create_backbone(cfg: BackboneParams) -> Backbone:
    """Build the configured backbone with its weights (see ``backbone.weights`` in params.yaml).

    Raises:
        WeightsError: Weights that cannot be found, fetched offline, or matched.
    """
    library, _, name = cfg.name.partition(":")
    if library == "hf":
        from thawline.models.hf_adapter import hf_backbone

        return hf_backbone(name, cfg.weights, cfg.pooling)
    return adapters()[library](name, cfg.weights)


def adapters() -> dict[str, Callable[[str, str], Backbone]]:
    """The adapter of each image model library, by the prefix of ``backbone.name``."""
    from thawline.models.timm_adapter import timm_backbone
    from thawline.models.torchvision_adapter import torchvision_backbone

    return {"timm": timm_backbone, "torchvision": torchvision_backbone}


@contextlib.contextmanager
def kept_modes(modules: list[nn.Module]) -> Iterator[None]:
    """Every submodule's train/eval mode as it was, afterwards: ``eval()`` inside is undone
    module by module (a phase keeps frozen BatchNorm in eval mode; ``train(mode)`` on a parent
    would overwrite that)."""
    modes = {m: m.training for module in modules for m in module.modules()}
    try:
        yield
    finally:
        for module, mode in modes.items():
            module.training = mode


def under(name: str, prefix: str) -> bool:
    """Whether parameter or module ``name`` is ``prefix`` or inside it."""
    return name == prefix or name.startswith(prefix + ".")


def weights_sha256(model: nn.Module) -> str:
    """A hash of every parameter and buffer: the backbone's identity in fingerprints."""
    return tensors_sha256(model.state_dict().items())


__all__ = [
    "Backbone",
    "FeatureBackbone",
    "adapters",
    "create_backbone",
    "kept_modes",
    "weights_sha256",
]
