"""What torchrun tells a process through its environment, readable without importing torch.

The CLI asks these before it knows whether a command needs torch at all (``thawline config``,
a disabled stage); :mod:`thawline.distributed` uses them for everything else.
"""

from __future__ import annotations

import os


def env_rank() -> int:
    """This process's global rank as torchrun set it (0 outside torchrun)."""
    return int(os.environ.get("RANK", 0))


def under_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ
