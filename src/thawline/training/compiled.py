"""``finetune.compile``: the network a phase trains, compiled by ``torch.compile`` (inductor).

Each phase's trained network (the whole classifier, its DDP wrapper, or the top of a cached
phase) is compiled once, at its first step, and reused for the rest of the run; validation,
LR range tests and the activation store's build stay eager. Compiling fuses BatchNorm and
the activations, forward and backward, around oneDNN's convolutions: on an Intel
Xeon (2 cores) Lite0's steps ran 1.13-1.26x faster with the depthwise kernels kept
(``train_depthwise: false``) and no faster with them trained, whose weight gradient is most
of a step (docs/benchmarks.md). The first step of each phase pays the compile (5-45 s on a
cold inductor cache, a few seconds warm), and on a CPU inductor needs a C++ compiler, checked
before the run starts so that a missing one is a clear error, not a failure mid-epoch.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from thawline.config import ConfigError

log = logging.getLogger(__name__)


def check_compiler(device: torch.device) -> None:
    """Raise ConfigError when inductor cannot build CPU kernels here (no C++ compiler)."""
    if device.type != "cpu":
        return  # CUDA kernels are Triton's, which brings its own compiler
    from torch._inductor.cpp_builder import get_cpp_compiler  # imported only when asked for
    from torch._inductor.exc import InvalidCxxCompiler

    try:
        get_cpp_compiler()  # inductor's own search: $CXX, else g++ (clang++ on macOS)
    except InvalidCxxCompiler as err:
        raise ConfigError(
            f"finetune.compile: true needs a C++ compiler for torch.compile's CPU kernels ({err}); "
            "install one (e.g. apt install g++, or point $CXX at one) or set finetune.compile: "
            "false"
        ) from None


class CompiledNetworks:
    """The compiled form of the network being trained (a mixin of the thaw loop's trainer,
    which sets ``opts``)."""

    _compiled: tuple[nn.Module, nn.Module] | None = None  # (network, its compiled form)

    def _trained_form(self, net: nn.Module) -> nn.Module:
        """``net`` itself, or with ``compile`` its compiled form (made at the first call). Only
        the current network's is kept: a phase never trains an earlier phase's network again,
        and an old DDP wrapper holds its gradient buckets."""
        if not self.opts.compile:
            return net
        if self._compiled is None or self._compiled[0] is not net:
            log.info("finetune.compile: %s compiles at its first step", type(net).__name__)
            self._compiled = (net, torch.compile(net))
        return self._compiled[1]
