"""How a ``thawline stage`` process tells whoever launched it how it ended.

An orchestrator (the Prefect flows, which run a stage through ``dvc repro``) sets
``$THAWLINE_STATUS`` to a file path; the stage command writes one JSON object there when it ends:
its exit code (see :mod:`thawline.errors`), the error message and the stage's metrics. DVC runs
the command only when the stage is out of date, so no file means the stage did not run; a failed
``dvc repro`` with no file, or with a crash code, means the stage never got to say (a locked
repo, a killed process) and may be retried. Under torchrun each process writes its own file
(``<path>.rank<N>``) and the launching process reports the first failure among them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from thawline.errors import CRASH
from thawline.files import write_json

ENV = "THAWLINE_STATUS"


@dataclass
class StageStatus:
    stage: str
    exit_code: int
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def status_path(rank: int | None = None) -> Path | None:
    """Where this process reports (``None`` when nobody asked); per rank under torchrun."""
    path = os.environ.get(ENV)
    if not path:
        return None
    return Path(path if rank is None else f"{path}.rank{rank}")


def write_status(status: StageStatus, rank: int | None = None) -> None:
    """Report how the stage ended, when ``$THAWLINE_STATUS`` asks for it."""
    if (path := status_path(rank)) is not None:
        write_json(path, asdict(status))


def read_status(path: Path) -> StageStatus | None:
    """The status a stage wrote to ``path``, or None when it wrote none (or an unreadable one)."""
    try:
        return StageStatus(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


@contextlib.contextmanager
def rank_reports(stage: str) -> Iterator[Callable[[int], StageStatus]]:
    """Around a torchrun launch: every process reports to ``<path>.rank<N>`` (a temporary path
    when no orchestrator set one); yields the function that turns torchrun's exit code and those
    reports into the launching process's status."""
    before = os.environ.get(ENV)
    base = Path(before) if before else Path(tempfile.mkdtemp(prefix="thawline-status-")) / "s"
    os.environ[ENV] = str(base)
    try:
        yield lambda code: _worst_of_ranks(stage, base, code)
    finally:
        for path in base.parent.glob(f"{base.name}.rank*"):
            path.unlink(missing_ok=True)
        if before is None:
            os.environ.pop(ENV, None)
            shutil.rmtree(base.parent, ignore_errors=True)


def _worst_of_ranks(stage: str, base: Path, launcher_code: int) -> StageStatus:
    """The first rank that failed with its own error, else a crash when torchrun failed (a
    killed or crashed process), else success with rank 0's metrics."""
    ranks = sorted(base.parent.glob(f"{base.name}.rank*"), key=lambda p: p.name)
    statuses = [read_status(p) for p in ranks]
    failed = [s for s in statuses if s is not None and s.exit_code != 0]
    if failed:
        return StageStatus(stage, failed[0].exit_code, failed[0].error)
    if launcher_code:
        return StageStatus(stage, CRASH, f"torchrun exited with {launcher_code}")
    rank0 = next((s for s in statuses if s is not None), None)
    return StageStatus(stage, 0, metrics=rank0.metrics if rank0 else {})
