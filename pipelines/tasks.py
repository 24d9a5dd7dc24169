"""One Prefect task per stage, each running ``dvc repro --single-item <stage>`` in the project.

DVC runs the stage's command from ``dvc.yaml`` (``thawline stage <name>``, the same ``run(cfg)``
that ``dvc repro`` and the tests call), skips it when its deps, params and outs are unchanged,
and writes ``dvc.lock``. The task passes paths, never tensors, and persists no result.

How the stage ended comes from the status file the stage command writes
(:mod:`thawline.stage_status`), never from log text: no file means DVC found the stage up to
date (it did not run); exit code 1 or 2 is the stage's own failure (retrying would fail the same
way); a crash, a killed process or a failure before the stage started (another DVC process holds
the repo lock) is transient and retried.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from prefect.tasks import exponential_backoff

from thawline.config import Config
from thawline.errors import BAD_INPUT, FAILED, StageError, TransientStageError
from thawline.stage_status import ENV, read_status

VENV_BIN = Path(sys.executable).parent  # dvc.yaml's commands (`thawline ...`) live here


@dataclass(frozen=True)
class StageOutcome:
    stage: str
    ran: bool  # False: DVC found it up to date
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)  # the stage's own, when it ran


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
def repro_stage(stage: str, repo: Path, force: bool = False) -> StageOutcome:
    """``dvc repro --single-item [--force] <stage>`` in ``repo``, its output in the task's log.

    Raises:
        StageError: The stage failed with its own error, exit code 1 or 2 (not retried).
        TransientStageError: Anything else, e.g. another DVC process holds the repo lock.
    """
    logger = get_run_logger()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="thawline-flow-") as folder:
        status_file = Path(folder) / f"{stage}.json"
        env = os.environ | {
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            ENV: str(status_file),
        }
        process = subprocess.Popen(
            dvc_command(stage, force), cwd=repo, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            lines.append(line.rstrip())
            if line.strip():
                logger.info(line.rstrip())
        code = process.wait()
        status = read_status(status_file)
    if status is not None and status.exit_code in (FAILED, BAD_INPUT):
        raise StageError(f"stage {stage}: {status.error}")
    if code != 0 or (status is not None and status.exit_code != 0):
        tail = "\n".join(lines[-15:])
        raise TransientStageError(f"stage {stage}: dvc exited with {code}:\n{tail}")
    seconds = round(time.perf_counter() - started, 2)
    return StageOutcome(stage, status is not None, seconds, status.metrics if status else {})


def stage_task(cfg: Config, stage: str):
    """``repro_stage`` named after the stage, with the retries of ``cfg.flow``."""
    delays = exponential_backoff(backoff_factor=cfg.flow.retry_delay_s)(cfg.flow.retries)
    return repro_stage.with_options(
        name=stage, retries=cfg.flow.retries, retry_delay_seconds=delays or 0
    )
