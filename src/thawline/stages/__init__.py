"""Pipeline stages: each is one ``run(cfg) -> StageResult``, for the CLI, Prefect and tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class StageResult:
    """What a stage produced: output paths, headline metrics and details for tracking."""

    outputs: dict[str, Path]
    metrics: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
