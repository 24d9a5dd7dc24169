"""A text encoder's forward pass as a chain of stages, for the boundary-activation cache.

The image chain passes one tensor from stage to stage. A transformer layer also needs the
attention mask, so a text stage passes ``(hidden states, mask)``: the embeddings turn token ids
into hidden states, and each encoder layer maps hidden states to hidden states under the mask's
attention bias (built by transformers' own ``create_bidirectional_mask``, as the model's forward
builds it). :func:`text_chain` checks the chain once, numerically, against the model's forward;
a family whose layers take other arguments fails the check and its phases run live.
"""

from __future__ import annotations

import torch
from torch import nn

from thawline.models.backbone import kept_modes

State = tuple[torch.Tensor, torch.Tensor]  # hidden states (or token ids) and the attention mask


class EmbeddingStage(nn.Module):
    """Token ids to the first hidden states."""

    def __init__(self, embeddings: nn.Module):
        super().__init__()
        self.embeddings = embeddings
        self.training = embeddings.training  # the wrapper's mode is the wrapped module's

    def forward(self, state: State) -> State:
        ids, mask = state
        return self.embeddings(input_ids=ids), mask


class LayerStage(nn.Module):
    """One encoder layer: hidden states to hidden states, padding masked out of attention."""

    def __init__(self, layer: nn.Module, config):
        super().__init__()
        self.layer, self.config = layer, config
        self.training = layer.training

    def forward(self, state: State) -> State:
        from transformers.masking_utils import create_bidirectional_mask

        hidden, mask = state
        bias = create_bidirectional_mask(config=self.config, inputs_embeds=hidden,
                                          attention_mask=mask)  # fmt: skip
        out = self.layer(hidden, bias)
        return (out[0] if isinstance(out, tuple) else out), mask


def text_chain(model: nn.Module, layers_path: str) -> list[tuple[str, nn.Module]] | None:
    """``[("embeddings", ...), ("<layers_path>.0", ...), ...]`` for ``model`` (a transformers
    encoder), or None where it has no ``embeddings`` module."""
    embeddings = getattr(model, "embeddings", None)
    if not isinstance(embeddings, nn.Module):
        return None
    stack = dict(model.named_modules())[layers_path]
    chain: list[tuple[str, nn.Module]] = [("embeddings", EmbeddingStage(embeddings))]
    chain += [(f"{layers_path}.{i}", LayerStage(layer, model.config)) for i, layer in
              enumerate(stack)]  # fmt: skip
    return chain


def chain_matches(backbone, chain: list[tuple[str, nn.Module]]) -> bool:
    """Whether running ``chain`` then pooling gives ``backbone.forward_features`` on a small
    batch with padding (eval mode, the model's modes restored afterwards)."""
    vocab = int(backbone.model.config.vocab_size)
    try:
        with (
            kept_modes([backbone.model]),
            torch.random.fork_rng(devices=[]),
            torch.inference_mode(),
        ):
            backbone.model.eval()
            torch.manual_seed(0)
            ids = torch.randint(1000 if vocab > 1000 else 0, vocab, (2, 12))
            ids = ids.to(next(backbone.model.parameters()).device)  # the check runs where it is
            mask = torch.ones_like(ids)
            mask[1, 7:] = 0  # the second document is padded
            x = torch.stack([ids, mask], dim=1)
            expected = backbone.forward_features(x)
            state = backbone.stage_input(x)
            for _, stage in chain:
                state = stage(state)
            got = backbone.stage_output(state)
        return got.shape == expected.shape and torch.allclose(got, expected, atol=1e-4)
    except (RuntimeError, TypeError, ValueError, AttributeError):
        return False
