"""The Hugging Face transformers adapter: BERT-family text encoders as a :class:`FeatureBackbone`.

``hf:<hub name or local folder>`` loads through ``AutoModel``/``AutoTokenizer`` (PyTorch SDPA
attention). The model's input is one integer tensor ``[B, 2, L]``: token ids and attention mask
stacked, so that everything above the backbone (the cache, the thaw loop, DDP, evaluation) moves
one tensor per batch for text as it does for images.

- ``forward_features``: the last hidden state pooled over the real tokens (``mean``, the
  sentence-transformers default) or its first token (``cls``);
- ``feature_layers()``: the encoder layers, ``encoder.layer.0`` ... (pooled the same way when
  ``extract.layers`` names them: the text counterpart of the image "feature pyramid");
- ``layer_groups()``: embeddings, each encoder layer, bottom to top (any final norm joins the top).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from thawline.errors import WeightsError
from thawline.models.backbone import under
from thawline.models.text_weights import quiet_transformers, resolve_folder

log = logging.getLogger(__name__)
MAX_TOKENS = 512  # BERT's position table; tokenizers that claim more are capped to it


class TextBackbone(nn.Module):
    """A transformers encoder with pooling, speaking the backbone protocol."""

    def __init__(self, name: str, model: nn.Module, folder: Path, pooling: str, max_length: int):
        super().__init__()
        self.name = name
        self.model = model
        self.folder = folder  # config.json and the tokenizer files (saved models copy them)
        self.pooling = pooling
        self.num_features = int(model.config.hidden_size)
        self.data_config: dict[str, Any] = {
            "modality": "text",
            "max_length": max_length,
            "pad_id": int(model.config.pad_token_id or 0),
        }
        self._layers = _encoder_layers(model)

    def forward_features(self, x: torch.Tensor, layers: list[str] | None = None) -> torch.Tensor:
        """Token ids and mask ``[B, 2, L]`` to pooled features ``[B, hidden * (1 + layers)]``."""
        ids, mask = x[:, 0].long(), x[:, 1].long()
        wanted = [self.feature_layers().index(name) + 1 for name in layers or []]
        out = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=bool(wanted))
        pooled = [self._pool(out.last_hidden_state, mask)]
        pooled += [_mean(out.hidden_states[i], mask) for i in wanted]
        return torch.cat(pooled, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)

    def forward_stages(self) -> list[tuple[str, nn.Module]] | None:
        """The encoder as a chain of stages on ``(hidden states, mask)`` (embeddings, then each
        layer; :mod:`thawline.models.text_stages`), or None where that chain does not reproduce
        ``forward_features`` (checked once). The activation cache of thaw phases cuts it."""
        from thawline.models.text_stages import chain_matches, text_chain

        chain = text_chain(self.model, self._layers)
        if chain is not None and getattr(self, "_chain_ok", None) is None:
            self._chain_ok = chain_matches(self, chain)
        return chain if chain is not None and self._chain_ok else None

    def stage_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The model input ``[B, 2, L]`` as the chain's first state: token ids and mask."""
        return x[:, 0].long(), x[:, 1].long()

    def stage_output(self, state: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The chain's last state (the last hidden states and the mask), pooled."""
        return self._pool(*state)

    def _pool(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return states[:, 0].float() if self.pooling == "cls" else _mean(states, mask)

    @property
    def layers_path(self) -> str:
        """The module path of the encoder's layer stack (BERT: ``encoder.layer``)."""
        return self._layers

    def feature_layers(self) -> list[str]:
        return [f"{self._layers}.{i}" for i in range(_layer_count(self.model, self._layers))]

    def layer_groups(self) -> list[list[str]]:
        """Parameter names per group: embeddings (all below the first layer), each layer."""
        names = [n for n, _ in self.model.named_parameters()]
        layers = self.feature_layers()
        groups = [[n for n in names if under(n, layer)] for layer in layers]
        claimed = {n for g in groups for n in g}
        below = [n for n in names if n not in claimed and "embed" in n]
        rest = [n for n in names if n not in claimed and n not in below]
        groups[-1].extend(rest)  # e.g. a final LayerNorm: it belongs with the top layer
        return [g for g in [below, *groups] if g]


def _mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token states where the mask is 1 (padding never counts)."""
    weights = mask.unsqueeze(-1).float()  # summed in fp32 even under bf16 autocast
    return (states.float() * weights).sum(1) / weights.sum(1).clamp(min=1)


def _encoder_layers(model: nn.Module) -> str:
    """The module path of the stack of transformer layers (BERT: ``encoder.layer``)."""
    count = int(model.config.num_hidden_layers)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return name
    raise WeightsError(f"{type(model).__name__}: no stack of {count} layers found to thaw")


def _layer_count(model: nn.Module, path: str) -> int:
    return len(dict(model.named_modules())[path])


def hf_backbone(name: str, weights: str, pooling: str = "mean") -> TextBackbone:
    """Load ``hf:<name>`` with ``backbone.weights`` (packaged / imagenet = pretrained / none /
    a state_dict file).

    Raises:
        WeightsError: The model cannot be found offline, or is not an encoder transformers loads.
    """
    from transformers import AutoConfig, AutoModel

    from thawline.models.weights import load_by_name, read_state_dict

    quiet_transformers()
    folder = resolve_folder(name, weights)
    try:
        config = AutoConfig.from_pretrained(folder)
        kwargs = {"attn_implementation": "sdpa"}
        if config.model_type == "bert":
            kwargs["add_pooling_layer"] = False  # unused by mean/cls pooling: no idle parameters
        if weights == "none" or weights not in ("packaged", "imagenet"):
            model = AutoModel.from_config(config, **kwargs)
        else:
            model = AutoModel.from_pretrained(folder, **kwargs)
    except (OSError, ValueError) as err:
        raise WeightsError(
            f"backbone hf:{name}: {folder} is not a model transformers' AutoModel loads "
            f"({' '.join(str(err).split())[:200]})"
        ) from None
    if weights not in ("packaged", "imagenet", "none"):
        load_by_name(model, read_state_dict(Path(weights)), weights)
    limit = min(int(getattr(config, "max_position_embeddings", MAX_TOKENS)), MAX_TOKENS)
    return TextBackbone(f"hf:{name}", model.eval(), folder, pooling, limit)
