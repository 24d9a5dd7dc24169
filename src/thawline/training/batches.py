"""Turning uint8 image batches into model inputs on the fly, and the precision to run them in.

Augmentation is per image (torchvision v2's batch transforms draw one random choice for the whole
batch) and draws from an explicit generator, so a resumed epoch sees the same flips and shifts.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torchvision.transforms.v2 import functional as TF

from thawline.models.preprocess import Preprocess


@dataclass(frozen=True)
class Precision:
    """Autocast dtype (None = fp32) and whether fp16 needs a GradScaler."""

    dtype: torch.dtype | None
    scaler: bool = False

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU.

    Raises:
        ValueError: ``cuda`` asked for on a machine without a CUDA device.
    """
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("finetune.device: 'cuda', but no CUDA device is available; use auto")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# Measured on this project's 2-core AVX512-BF16 CPU, full Lite0 fine-tuning at batch 64: bf16
# autocast is 0.6x fp32 at 64 px and 0.8x at 96 px, but 1.3x at 128 px (small convolutions
# spend more on casting than they save). bench/finetune.py measures it.
CPU_BF16_MIN_SIZE = 112


def resolve_precision(
    precision: str, device: torch.device, image_size: int | None = None
) -> Precision:
    """``auto``: bf16 where the hardware has it natively (on CPU only for inputs of at least
    ``CPU_BF16_MIN_SIZE`` px, where it is faster), else fp16 + GradScaler on CUDA, else fp32.

    Raises:
        ValueError: fp16 on a CPU (no GradScaler-backed fp16 training there).
    """
    cuda = device.type == "cuda"
    if precision == "fp16" and not cuda:
        raise ValueError("finetune.precision: fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    if precision == "auto":
        if cuda:
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
            large = image_size is None or image_size >= CPU_BF16_MIN_SIZE
            precision = "bf16" if native and large else "fp32"
    if precision == "fp32":
        return Precision(None)
    if precision == "bf16":
        return Precision(torch.bfloat16)
    return Precision(torch.float16, scaler=True)


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    """Autocast in the chosen dtype, or nothing for fp32."""
    if precision.dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=precision.dtype)


def training_batch(
    images: torch.Tensor,
    preprocess: Preprocess,
    *,
    augment: bool,
    max_shift: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` to the normalised model input, randomly flipped and shifted."""
    x = preprocess.resize(images)
    if augment:
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
