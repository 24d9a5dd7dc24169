"""Fine-tuning under torchrun: the DDP wrapper of each phase, and the check that the replicas
agree at the end.

The wrapper is rebuilt whenever a phase thaws more groups: DDP registers its all-reduce hooks on
the parameters that require gradients when it is built, so a group thawed later would train on
local gradients only and the replicas would drift apart. ``find_unused_parameters`` would not fix
that (it finds parameters missing from the graph, not ones that were frozen at construction) and
costs a graph walk every step; a rebuild costs one parameter broadcast per phase.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from thawline.distributed import World
from thawline.files import tensors_sha256


class PhaseWrapper:
    """The network a phase trains: the model, or under torchrun its DDP wrapper for the phase."""

    def __init__(self, model: nn.Module, world: World, device: torch.device):
        self.model, self.world, self.device = model, world, device
        self.wrapped: tuple[int, nn.Module] | None = None  # (phase, DDP wrapper)

    def network(self, phase: int) -> nn.Module:
        if not self.world.active:
            return self.model
        if self.wrapped is None or self.wrapped[0] != phase:
            self.wrapped = None  # the old wrapper's hooks go with it
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.wrapped = (phase, DistributedDataParallel(self.model, device_ids=ids))
        return self.wrapped[1]


def check_replicas(model: nn.Module, world: World) -> None:
    """Under torchrun, every rank must end with the same weights; say so if they do not."""
    if not world.active:
        return
    state = model.state_dict()
    digests = world.gather(tensors_sha256(sorted(state.items())))
    if len(set(digests)) > 1:
        raise RuntimeError(
            f"finetune: the {world.size} processes ended with different weights; a gradient "
            "was not synchronised. Please report this with your params.yaml"
        )
