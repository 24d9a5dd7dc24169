"""The training flow: every stage in order, each a Prefect task that runs it through DVC.

thawline flow run [-p params.yaml] [-S head.lr=0.003 ...]
"""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from pipelines.project import project
from pipelines.summary import summary_markdown
from pipelines.tasks import StageOutcome, stage_task
from thawline.stage_table import NAMES
from thawline.tracking import pipeline_run

DESCRIPTION = " -> ".join(NAMES)


@flow(name="thawline-training", log_prints=True, persist_result=False)
def training(params: str = "params.yaml", overrides: list[str] | None = None) -> list[dict]:
    """Every stage of the stage table in order (prepare -> extract -> ... -> register).

    Args:
        params: The project's params.yaml.
        overrides: ``KEY=VALUE`` items written into params.yaml first, as ``dvc exp run -S``.

    Returns:
        Per stage: its name, whether it ran (False: DVC found it up to date) and its seconds.
    """
    logger = get_run_logger()
    with project(params, overrides) as (repo, cfg), pipeline_run(cfg, "training-flow") as run_id:
        outcomes: list[StageOutcome] = []
        for stage in NAMES:
            outcomes.append(stage_task(cfg, stage)(stage, repo))
        ran = [o.stage for o in outcomes if o.ran] or ["nothing: all up to date"]
        logger.info("training flow done; ran %s", ", ".join(ran))
        markdown = summary_markdown(cfg, "thawline training flow", outcomes, run_id)
    create_markdown_artifact(markdown, key="thawline-training", description="training flow run")
    return [vars(o) for o in outcomes]


if __name__ == "__main__":
    training()
