"""Turning uint8 image batches into model inputs on the fly, and deterministic kernels.

Augmentation is per image (torchvision v2's batch transforms draw one random choice for the whole
batch) and draws from an explicit generator, so a resumed epoch sees the same flips and shifts.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from torchvision.transforms.v2 import functional as TF

from thawline.models.preprocess import Preprocess


def training_batch(
    images: torch.Tensor,
    preprocess: Preprocess,
    *,
    augment: bool,
    max_shift: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` to the normalised model input, randomly flipped and shifted
    (tokens ``[B, 2, L]``: trimmed to the batch's longest document, never augmented)."""
    x = preprocess.resize(images)
    if augment and preprocess.augmentable:
        x = flip_and_shift(x, max_shift, generator)
    return preprocess.normalize(x)


def flip_and_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Flip each image horizontally with p=0.5 and shift it by up to ``max_shift`` pixels."""
    n, _, h, w = x.shape
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    x = torch.where(flip.view(-1, 1, 1, 1), TF.horizontal_flip(x), x)
    if max_shift == 0:
        return x
    # Edge padding, then a random crop back to size: a translation without black borders.
    padded = TF.pad(x, [max_shift] * 4, padding_mode="edge")
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator).tolist()
    return torch.stack(
        [padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)]
    )


@contextlib.contextmanager
def deterministic(enabled: bool) -> Iterator[None]:
    """Deterministic kernels while training (restored afterwards), for bit-exact resume."""
    if not enabled:
        yield
        return
    before = torch.are_deterministic_algorithms_enabled()
    benchmark = torch.backends.cudnn.benchmark
    # cuBLAS needs this workspace setting to be deterministic; it must be set before first use.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)
        torch.backends.cudnn.benchmark = benchmark
