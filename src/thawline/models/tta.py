"""Test-time augmentation: the softmax of an image model averaged over fixed views of each image.

The views are the deterministic counterparts of training's random augmentation
(training/batches.py): a horizontal flip and, with ``flip_shift``, shifts of a thirty-second of
the input size (2 px at 64 px, 7 at 224) left, right, up and down, edge-padded as in training.
They act on the normalised input; flipping and edge-shifting commute with the per-channel
normalisation, so this is the same as augmenting the uint8 image. fastai's ``Learner.tta`` is the
reference (it averages random training views; fixed views keep a prediction reproducible).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.transforms.v2 import functional as TF

from thawline.config import TTA_CHOICES
from thawline.errors import InputError

View = Callable[[torch.Tensor], torch.Tensor]


class TTAError(InputError, ValueError):
    """A TTA setting that does not exist, or TTA asked of a model it does not apply to."""


def tta_views(kind: str, size: int) -> list[View]:
    """The views of ``kind`` for inputs of ``size`` pixels, the plain view first.

    Raises:
        TTAError: ``kind`` is not one of ``TTA_CHOICES``.
    """
    if kind not in TTA_CHOICES:
        raise TTAError(f"tta: '{kind}' is not a TTA setting; use one of {', '.join(TTA_CHOICES)}")
    views: list[View] = [lambda x: x]
    if kind == "none":
        return views
    views.append(TF.horizontal_flip)
    if kind == "flip_shift":
        step = max(1, size // 32)
        views += [_shifted(dy, dx) for dy, dx in ((0, step), (0, -step), (step, 0), (-step, 0))]
    return views


def _shifted(dy: int, dx: int) -> View:
    """Move the image by ``(dy, dx)`` pixels, repeating the edge into the gap."""

    def view(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pad = max(abs(dy), abs(dx))
        padded = TF.pad(x, [pad] * 4, padding_mode="edge")
        top, left = pad - dy, pad - dx
        return padded[..., top : top + h, left : left + w]

    return view


def check_tta(kind: str, modality: str) -> None:
    """Refuse an unknown setting, or any TTA for a text model (documents have no views).

    Raises:
        TTAError: What is wrong, and what is allowed.
    """
    tta_views(kind, 1)
    if kind != "none" and modality != "image":
        raise TTAError(f"tta: '{kind}' applies to image models only; this is a {modality} model")


@torch.inference_mode()
def tta_softmax(
    network: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    kind: str,
    plain: torch.Tensor | None = None,
) -> torch.Tensor:
    """float32 ``[B, C]``: ``softmax(network(view(x)))`` averaged over the views of ``kind``.

    Args:
        network: Normalised input ``[B, 3, S, S]`` to logits (``Classifier.network``).
        x: A preprocessed batch.
        kind: One of ``TTA_CHOICES``.
        plain: ``network(x)`` when the caller has it already (the plain view is not run again).
    """
    views = tta_views(kind, x.shape[-1])
    plain = network(x) if plain is None else plain
    total = torch.softmax(plain.float(), dim=1)
    for view in views[1:]:
        total = total + torch.softmax(network(view(x)).float(), dim=1)
    return total / len(views)
