"""What turns documents into a text backbone's input, shared by prepare, the model and serving.

:func:`tokenize` runs once in ``prepare`` (and on each served request): token ids and attention
mask at ``max_length``, truncated at the head or at head and tail. The model's input is one
integer tensor ``[B, 2, L]`` (ids and mask stacked). :class:`TextPreprocess` plays the part
``Preprocess`` plays for images: it trims a batch to its longest document (dynamic padding), so
a batch of short documents does not pay for ``max_length``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
import torch

CHARS_PER_TOKEN = 16  # a cut before tokenising: a 5 MB document never reaches the tokenizer


@dataclass(frozen=True)
class TextPreprocess:
    """The text counterpart of :class:`~thawline.models.preprocess.Preprocess`."""

    max_length: int
    truncation: str
    pad_id: int
    kind: str = "text"
    augmentable: ClassVar[bool] = False  # flips and shifts are for pictures

    @property
    def size(self) -> int:
        return self.max_length

    def resize(self, batch: torch.Tensor) -> torch.Tensor:
        """``[B, 2, max_length]`` to ``[B, 2, longest]``: the padding no document needs goes."""
        longest = int(batch[:, 1].sum(1).max()) if len(batch) else 1
        return batch[:, :, : max(longest, 1)]

    def normalize(self, batch: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        return batch  # ids stay integers; ``dtype`` is the image path's

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.resize(batch)

    def spec(self) -> dict[str, Any]:
        return asdict(self)


def stack_tokens(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Stored ids and mask (compact dtypes) to the model's input ``[N, 2, L]`` int32."""
    return torch.stack([ids.to(torch.int32), mask.to(torch.int32)], dim=1)


def tokenize(tokenizer, texts: list[str], max_length: int, truncation: str):
    """Documents to ``(ids [N, L], mask uint8 [N, L], truncated [N] bool)``.

    ``head`` keeps the first tokens; ``head+tail`` the first quarter of the budget and the last
    three quarters (Sun et al., "How to fine-tune BERT for text classification?", 2019). Ids are
    int16 when the vocabulary fits, else int32.
    """
    prefix, suffix = _special_tokens(tokenizer)
    budget = max_length - len(prefix) - len(suffix)
    chars = budget * CHARS_PER_TOKEN
    cut = [t if len(t) <= 2 * chars else t[:chars] + " " + t[-chars:] for t in texts]
    if truncation == "head":
        cut = [t[:chars] for t in cut]
    encoded = tokenizer(cut, add_special_tokens=False, truncation=False)["input_ids"] if cut else []
    dtype = np.int16 if len(tokenizer) <= np.iinfo(np.int16).max else np.int32
    ids = np.full((len(texts), max_length), tokenizer.pad_token_id or 0, dtype=dtype)
    mask = np.zeros((len(texts), max_length), dtype=np.uint8)
    truncated = np.zeros(len(texts), dtype=bool)
    for row, (tokens, text, short) in enumerate(zip(encoded, texts, cut, strict=True)):
        truncated[row] = len(tokens) > budget or len(short) < len(text)
        if len(tokens) > budget:
            head = budget if truncation == "head" else budget // 4
            tokens = tokens[:head] + (
                tokens[len(tokens) - (budget - head) :] if head < budget else []
            )
        full = prefix + tokens + suffix
        ids[row, : len(full)] = full
        mask[row, : len(full)] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(truncated)


def _special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids a tokenizer puts before and after one sequence ([CLS] / [SEP], <s> / </s>)."""
    probe = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for start in range(len(full) - len(probe) + 1):
        if full[start : start + len(probe)] == probe:
            return full[:start], full[start + len(probe) :]
    return [], []
