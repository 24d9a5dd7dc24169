"""Where torch runs and in which precision: one rule for extraction, training and evaluation.

``auto`` precision follows measurement on this project's 2-core AVX512-BF16 CPU: the frozen
extractor runs bf16 wherever the CPU has it natively (2x eager fp32 and more, docs/benchmarks.md),
but full Lite0 *training* at batch 64 in bf16 autocast is 0.6x fp32 at 64 px and 0.8x at 96 px,
and only 1.3x at 128 px (small convolutions spend more on casting than they save), so training
and the evaluation of trained models use bf16 on a CPU only from ``CPU_BF16_MIN_SIZE`` px up.
bench/finetune_speed.py measures it on the machine at hand.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from thawline.errors import ConfigError

CPU_BF16_MIN_SIZE = 112


@dataclass(frozen=True)
class Precision:
    """Autocast dtype (None = fp32) and whether fp16 training needs a GradScaler."""

    dtype: torch.dtype | None
    scaler: bool = False

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]


def resolve_device(requested: str, key: str = "finetune.device") -> torch.device:
    """``auto`` is CUDA when available, else CPU.

    Raises:
        ConfigError: ``cuda`` asked for (at ``key``) on a machine without a CUDA device.
    """
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}: 'cuda', but no CUDA device is available; use auto or cpu")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def resolve_precision(
    requested: str,
    device: torch.device,
    image_size: int | None = None,
    *,
    training: bool = True,
    key: str = "finetune.precision",
) -> Precision:
    """``auto``: bf16 where the hardware has it natively (on a CPU, for training and trained
    models only from ``CPU_BF16_MIN_SIZE`` px up; ``image_size=None``: any size, as the frozen
    extractor), else fp16 (+ GradScaler when training) on CUDA, else fp32.

    Raises:
        ConfigError: fp16 training on a CPU (no GradScaler-backed fp16 there).
    """
    cuda = device.type == "cuda"
    if requested == "fp16" and training and not cuda:
        raise ConfigError(f"{key}: fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    if requested == "auto":
        if cuda:
            requested = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            large = image_size is None or image_size >= CPU_BF16_MIN_SIZE
            requested = "bf16" if native_cpu_bf16() and large else "fp32"
    if requested == "fp32":
        return Precision(None)
    if requested == "bf16":
        return Precision(torch.bfloat16)
    return Precision(torch.float16, scaler=training)


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16, AMX): oneDNN's own answer."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    """Autocast in the chosen dtype, or nothing for fp32."""
    if precision.dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=precision.dtype)
