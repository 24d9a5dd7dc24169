"""The small JSON files of a trained-model folder: ``record.json`` and ``plan.json``.

Their layout is described in :mod:`thawline.training.trained_model`, which trains and writes the
model beside them. They live in a module of their own that imports no torch, so a stage that
decides not to train (``scratch`` disabled) records that in well under a second.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from thawline.errors import UpstreamError
from thawline.files import read_json, write_json
from thawline.stage_table import StageResult
from thawline.torchrun_env import env_rank

RECORD, MODEL, PLAN = "record.json", "model", "plan.json"


def skip(folder: Path, record: dict[str, Any]) -> StageResult:
    """Record that nothing was trained (and why); remove an older model so none looks current."""
    if env_rank() != 0:  # under torchrun rank 0 writes for all
        return StageResult(outputs={}, info=record | {"trained": False})
    shutil.rmtree(folder / MODEL, ignore_errors=True)
    write_json(folder / RECORD, record | {"trained": False})  # the caller said why
    return StageResult(outputs={"record": folder / RECORD}, info=record | {"trained": False})


def write_plan(folder: Path, strategy: str, reason: str, budget_epochs: int) -> None:
    """Record the resolved strategy and its budget (rank 0 only, under torchrun)."""
    if env_rank() == 0:
        plan = {"strategy": strategy, "reason": reason, "budget_epochs": budget_epochs}
        write_json(folder / PLAN, plan)


def read_plan(folder: Path) -> dict[str, Any]:
    """The fine-tune's resolved strategy and budget.

    Raises:
        UpstreamError: The finetune stage has not run here.
    """
    path = folder / PLAN
    if not path.is_file():
        raise UpstreamError(
            f"{path}: no fine-tuning plan here; run 'thawline stage finetune' first (the "
            "scratch baseline trains for the fine-tune's budget), or set scratch.epochs"
        )
    return read_json(path)


def read_record(folder: Path) -> dict[str, Any] | None:
    """The stage's record, or None when the stage never finished in ``folder``."""
    path = folder / RECORD
    return read_json(path) if path.is_file() else None
