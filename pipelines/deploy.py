"""Both flows as Prefect deployments on the cron schedules of ``params.yaml`` (``flow``).

    thawline flow serve [-p params.yaml]

``prefect.serve`` registers the deployments with the Prefect API (``$PREFECT_API_URL``, e.g. a
``prefect server start`` on 127.0.0.1:4200; without it, Prefect's local server on SQLite) and
runs them in this process when they are due. ``prefect deployment ls`` lists them.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from cronsim import CronSim
from prefect import serve as prefect_serve
from prefect.schedules import Cron

from pipelines.retrain_flow import DESCRIPTION as RETRAIN
from pipelines.retrain_flow import retrain
from pipelines.training_flow import DESCRIPTION as TRAINING
from pipelines.training_flow import training
from thawline.config import Config, load_config


def deployments(params: Path, cfg: Config) -> list:
    """The training and retrain deployments, their params file fixed to ``params``."""
    parameters = {"params": str(params)}
    return [
        training.to_deployment(
            name="thawline-training",
            schedule=Cron(cfg.flow.cron, timezone=cfg.flow.timezone),
            parameters=parameters,
            description=TRAINING,
        ),
        retrain.to_deployment(
            name="thawline-retrain",
            schedule=Cron(cfg.flow.retrain_cron, timezone=cfg.flow.timezone),
            parameters=parameters,
            description=RETRAIN,
        ),
    ]


def schedule_lines(cfg: Config, now: datetime | None = None) -> list[str]:
    """One line per deployment: its name, cron, time zone and next run time."""
    zone = ZoneInfo(cfg.flow.timezone)
    now = (now or datetime.now(zone)).astimezone(zone)
    lines = []
    for name, cron in (("thawline-training", cfg.flow.cron),
                       ("thawline-retrain", cfg.flow.retrain_cron)):  # fmt: skip
        due = next(CronSim(cron, now))
        lines.append(
            f"{name}: cron '{cron}' ({cfg.flow.timezone}), next run {due:%Y-%m-%d %H:%M %Z}"
        )
    return lines


def serve(params: str = "params.yaml") -> None:
    """Register both deployments and run them on schedule until interrupted."""
    path = Path(params).resolve()
    cfg = load_config(path)
    for line in schedule_lines(cfg):
        print(f"thawline: serving {line}", flush=True)
    prefect_serve(*deployments(path, cfg))
