"""The frozen part of a thaw phase as one fast function, for building the activation store:
it runs forward only, on every training image and view, with weights that do not change."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


def frozen_forward(
    stages: list[nn.Module],
    enter: Callable[[torch.Tensor], Any],
    eager: Callable[[torch.Tensor], Any],
    example: torch.Tensor,
    precision,
) -> Callable[[torch.Tensor], Any]:
    """``eager`` (``stages`` run one after the other on ``enter(x)``) as a faster function.
    Images in fp32 on a CPU: traced and frozen by TorchScript, which folds BatchNorm into
    the convolutions, and checked against ``eager`` on ``example`` (within the store's
    float16 rounding); ``eager`` itself otherwise (text, autocast, CUDA), where tracing fails
    or disagrees, and for any batch the traced graph cannot take. Call with the stages in eval
    mode."""
    if example.ndim != 4 or example.device.type != "cpu" or precision.dtype is not None:
        return eager
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # TorchScript is deprecated; torch.compile would take about a minute on 2 cores.
            warnings.simplefilter("ignore")
            chain = nn.Sequential(*stages).eval()  # eval already (the caller keeps modes)
            traced = torch.jit.freeze(torch.jit.trace(chain, enter(example)))
            expected = eager(example)  # BatchNorm folded: ~1e-5 of the largest activation
            worst = (traced(enter(example)) - expected).abs().max()
            agrees = bool(worst <= 1e-3 * expected.abs().max())  # float16 stores ~5e-4
    except Exception as err:  # a stage that does not trace still runs eagerly
        log.info("finetune: the frozen part runs eagerly for the store (%s)", err)
        return eager
    if not agrees:
        log.info("finetune: the traced frozen part disagrees with the eager one; eager it is")
        return eager

    def fast(x: torch.Tensor) -> Any:
        try:
            return traced(enter(x))
        except RuntimeError:  # a shape baked into the trace (a batch size, say)
            return eager(x)

    return fast
