"""torch.distributed for stages launched by torchrun: which process this is, and a few collectives.

thawline does not schedule anything itself. ``torchrun`` starts the processes and sets
``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; a stage joins the process group with :func:`join` (gloo
on CPU, nccl on CUDA) and gets a :class:`World`. Without torchrun the world has one process and
every collective is a no-op, so the stage code is the same either way.

``launch`` is the other half: ``thawline stage extract --nproc N`` (or ``extract.nproc: N``)
re-runs the same command under ``torchrun --standalone --nproc-per-node N``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from thawline.torchrun_env import env_rank, under_torchrun  # noqa: F401 (callers use both)

log = logging.getLogger(__name__)
# A rank that is still working (a big shard, a slow disk) must not make the others give up.
TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class World:
    """The processes of one run. ``World()`` is a single process: collectives do nothing."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes manifests, checkpoints, models and MLflow runs."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    def device(self, device: torch.device) -> torch.device:
        """``device`` as this process's own: ``cuda:LOCAL_RANK`` on CUDA (one GPU per process)."""
        if device.type == "cuda" and self.active:
            return torch.device("cuda", self.local_rank)
        return device

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def share(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (what the others pass is ignored)."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over ranks in place (and return it)."""
        if self.active:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def broadcast_buffers(self, module: torch.nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every rank."""
        if self.active:
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)


@contextlib.contextmanager
def join(device: torch.device) -> Iterator[World]:
    """The world of this process: under torchrun, join the process group for ``device``.

    gloo for CPU tensors, nccl for CUDA ones (one GPU per process, ``LOCAL_RANK``). A group that
    is already initialised (a caller joined first) is used as it is and left open.
    """
    if not under_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        yield World()
        return
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    owned = not dist.is_initialized()
    if owned:
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend, timeout=TIMEOUT)
    world = World(dist.get_rank(), dist.get_world_size(), local_rank)
    if world.main:
        log.info("distributed: %d processes (%s)", world.size, dist.get_backend())
    try:
        yield world
    finally:
        if owned:
            dist.destroy_process_group()


def launch(argv: list[str], nproc: int) -> int:
    """Run ``thawline <argv>`` in ``nproc`` processes on this machine with torchrun; its exit code.

    Each process gets an equal share of the CPU threads (torchrun's default is one thread each,
    with a warning), unless ``OMP_NUM_THREADS`` is already set.
    """
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={nproc}", "-m", "thawline", *argv,
    ]  # fmt: skip
    log.info("launching: torchrun --standalone --nproc-per-node=%d -m thawline %s",
             nproc, " ".join(argv))  # fmt: skip
    code = subprocess.call(command, env=env)
    if code:  # torchrun ends with its own traceback; the processes' messages are above it
        print(f"thawline: {' '.join(argv[:2])} failed in torchrun (exit code {code}); the "
              "processes' own errors are above torchrun's report", file=sys.stderr)  # fmt: skip
    return code
