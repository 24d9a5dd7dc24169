"""Where torch runs and in which precision: one rule for extraction, training and evaluation.

``auto`` is bf16 wherever the hardware computes it natively (on a CPU the frozen extractor
runs bf16 there: 2x eager fp32 and more, docs/benchmarks.md) and fp16 on CUDA without bf16.
Training and trained image models (on a CPU with native bf16, and on CUDA) do not follow this
rule: whether half precision pays depends on the processor, the network and the input size, so
:mod:`thawline.precision_choice` measures it on the machine at hand.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from thawline.errors import ConfigError


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
    *,
    training: bool = True,
    key: str = "finetune.precision",
) -> Precision:
    """``auto``: bf16 where the hardware has it natively, else fp16 (+ GradScaler when
    training) on CUDA, else fp32 (image models: :mod:`thawline.precision_choice` measures).

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
            requested = "bf16" if native_cpu_bf16() else "fp32"
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
