"""Run statistics: how long a stage took and how much it computed, apart from what it produced.

A stage's outputs are a function of its inputs, so DVC sees a repeated or resumed run that
produced the same content as unchanged and reruns nothing downstream. Wall time, images per
second, rows computed or reused and the checkpoint a run resumed from are facts about one run,
not about its inputs: they go to the stage's metrics (MLflow, the status a flow reads) and to
``<paths.stats>/<stage>.json`` (git-ignored, not a DVC output), where the report finds them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from thawline.files import read_json, write_json


def write_stats(folder: Path, stage: str, stats: dict[str, Any]) -> None:
    """Record ``stage``'s statistics of this run (replacing the last run's)."""
    write_json(Path(folder) / f"{stage}.json", stats)


def read_stats(folder: Path, stage: str) -> dict[str, Any]:
    """The statistics of ``stage``'s last run, or ``{}`` when it has none here."""
    path = Path(folder) / f"{stage}.json"
    try:
        return read_json(path)
    except (OSError, ValueError):
        return {}
