"""One Prefect task per stage, each running ``dvc repro --single-item <stage>`` in the project.

DVC runs the stage's command from ``dvc.yaml`` (``thawline stage <name>``, the same ``run(cfg)``
that ``dvc repro`` and the tests call), skips it when its deps, params and outs are unchanged,
and writes ``dvc.lock``. The task passes paths, never tensors, and persists no result.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from prefect.tasks import exponential_backoff

from thawline.config import Config

VENV_BIN = Path(sys.executable).parent  # dvc.yaml's commands (`thawline ...`) live here
# How a stage reports its own failure (thawline's CLI): retrying would fail the same way.
STAGE_ERROR = re.compile(r"thawline: (config error|\w+ failed): .*")


class StageError(RuntimeError):
    """A stage failed with its own error (bad config, bad data, NaN): not retried."""


class TransientStageError(RuntimeError):
    """A stage crashed for a reason outside it (a locked repo, a killed process): retried."""


@dataclass(frozen=True)
class StageOutcome:
    stage: str
    ran: bool  # False: DVC found it up to date
    seconds: float


def dvc_command(stage: str, force: bool = False) -> list[str]:
    return [sys.executable, "-m", "dvc", "repro", "--single-item", *(["--force"] * force), stage]


def _is_transient(task, task_run, state) -> bool:
    try:
        state.result()
    except TransientStageError:
        return True
    except Exception:
        return False
    return False


@task(cache_policy=NO_CACHE, persist_result=False, retry_condition_fn=_is_transient)
def run_stage(stage: str, repo: Path, force: bool = False) -> StageOutcome:
    """``dvc repro --single-item [--force] <stage>`` in ``repo``, its output in the task's log.

    Raises:
        StageError: The stage failed with its own message (not retried).
        TransientStageError: Anything else, e.g. another DVC process holds the repo lock.
    """
    logger = get_run_logger()
    env = os.environ | {"PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    started = time.perf_counter()
    process = subprocess.Popen(
        dvc_command(stage, force), cwd=repo, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    lines = []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line.rstrip())
        if line.strip():
            logger.info(line.rstrip())
    code = process.wait()
    output = "\n".join(lines)
    if code != 0:
        if found := STAGE_ERROR.search(output):
            raise StageError(f"stage {stage}: {found.group(0)}")
        tail = "\n".join(lines[-15:])
        raise TransientStageError(f"stage {stage}: dvc exited with {code}:\n{tail}")
    ran = f"Running stage '{stage}'" in output
    return StageOutcome(stage, ran, round(time.perf_counter() - started, 2))


def stage_task(cfg: Config, stage: str):
    """``run_stage`` named after the stage, with the retries of ``cfg.flow``."""
    delays = exponential_backoff(backoff_factor=cfg.flow.retry_delay_s)(cfg.flow.retries)
    return run_stage.with_options(
        name=stage, retries=cfg.flow.retries, retry_delay_seconds=delays or 0
    )
