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
import os
import shutil

import torch
from torch import nn

from thawline.config import ConfigError

log = logging.getLogger(__name__)


def check_compiler(device: torch.device) -> None:
    """Raise ConfigError when inductor cannot build CPU kernels here (no C++ compiler)."""
    if device.type != "cpu":
        return  # CUDA kernels are Triton's, which brings its own compiler
    wanted = os.environ.get("CXX") or "g++"
    if not any(shutil.which(name) for name in (wanted, "c++", "clang++")):
        raise ConfigError(
            "finetune.compile: true needs a C++ compiler for torch.compile's CPU kernels, and "
            f"none was found on PATH ({wanted}, c++, clang++); install one (e.g. apt install "
            "g++) or set finetune.compile: false"
        )


class CompiledNetworks:
    """The compiled form of each network trained so far, by identity (a mixin of the thaw
    loop's trainer, which sets ``opts``)."""

    _compiled: dict[int, tuple[nn.Module, nn.Module]]

    def _trained_form(self, net: nn.Module) -> nn.Module:
        """``net`` itself, or with ``compile`` its compiled form (made at the first call)."""
        if not self.opts.compile:
            return net
        if not hasattr(self, "_compiled"):
            self._compiled = {}
        if id(net) not in self._compiled:  # the entry holds ``net``: its id stays its own
            log.info("finetune.compile: %s compiles at its first step", type(net).__name__)
            self._compiled[id(net)] = (net, torch.compile(net))
        return self._compiled[id(net)][1]
