"""Learning-rate schedules as small pure functions (wrapped in ``LambdaLR`` by the loops)."""

from __future__ import annotations

import math


def warmup_cosine(step: int, total: int, warmup_fraction: float = 0.1) -> float:
    """LR multiplier at ``step``: linear warm-up, then cosine decay towards 0.

    The one-cycle shape, but defined for any ``total`` (torch's OneCycleLR divides by zero when a
    tiny run has fewer steps than phases).
    """
    warmup = max(1, round(total * warmup_fraction))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
