"""The retrain flow, for a schedule: do only the work a change in the data source needs.

Tiers, each decision logged:

1. Hash the source's images (content, not mtime) against what ``paths.prepared`` was made from.
   Nothing changed: stop, and say so.
2. Something changed: prepare again, extract features for the new or changed images only (the
   rest are copied from the cache, see ``thawline.features.reuse``), retrain the head.
3. Fine-tune too only when ``retrain.finetune`` says so: ``always``, or ``auto`` with the retrained
   head's validation accuracy below ``retrain.escalate_below``.
4. Evaluate and register; the champion gate decides as always.

    thawline flow retrain [-p params.yaml]
"""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from pipelines.project import project
from pipelines.summary import summary_markdown
from pipelines.tasks import StageOutcome, stage_task
from pipelines.training_flow import training
from thawline.config import Config
from thawline.data.store import PreparedStore
from thawline.tracking import pipeline_run
from thawline.training.retrain_policy import SourceCheck, escalation, source_changed

DESCRIPTION = "on new or changed images: extract those, retrain the head, evaluate, register"


@task(name="check data source", cache_policy=NO_CACHE, persist_result=False)
def check_data(cfg: Config) -> SourceCheck:
    return source_changed(cfg)


def _computed(outcomes: list[dict]) -> int:
    """Images that went through the backbone: the extract stage's own metric (0: up to date)."""
    metrics = next((o["metrics"] for o in outcomes if o["stage"] == "extract"), {})
    return int(metrics.get("images_computed", 0))


@flow(name="thawline-retrain", log_prints=True, persist_result=False)
def retrain(params: str = "params.yaml") -> dict:
    """Retrain on a changed data source, in tiers (see the module docstring).

    Returns:
        ``action`` (nothing | head | finetune | initial: nothing was trained yet, so the whole
        training flow ran), ``reasons``, ``images_computed`` (images that
        went through the backbone) and the stages with whether each ran.
    """
    logger = get_run_logger()
    with project(params) as (repo, cfg):
        check = check_data(cfg)
        if not check.changed:
            logger.info("retrain: nothing to do: %s", check.reason)
            return {"action": "nothing", "reasons": [check.reason], "images_computed": 0,
                    "stages": []}  # fmt: skip
        logger.info("retrain: %s", check.reason)
        if not PreparedStore.exists(cfg.paths.prepared):
            logger.info("retrain: nothing trained yet: running the whole training flow")
            stages = training(params)
            return {"action": "initial", "reasons": [check.reason], "stages": stages,
                    "images_computed": _computed(stages)}  # fmt: skip
        reasons = [check.reason]
        outcomes: list[StageOutcome] = []
        with pipeline_run(cfg, "retrain-flow") as run_id:
            # Forced: DVC's state keys on size and mtime and can miss an in-place rewrite.
            outcomes.append(stage_task(cfg, "prepare")("prepare", repo, force=True))
            for stage in ("extract", "train_head"):
                outcomes.append(stage_task(cfg, stage)(stage, repo))
            computed = _computed([vars(o) for o in outcomes])
            reasons.append(f"{computed} new or changed images went through the backbone")
            decision = escalation(cfg)
            reasons.append(decision.reason)
            later = ["evaluate", "register"]
            if decision.strategy == "finetune":
                later = ["finetune", *(["scratch"] if cfg.scratch.enabled else []), *later]
            for stage in later:
                outcomes.append(stage_task(cfg, stage)(stage, repo))
            for reason in reasons[1:]:
                logger.info("retrain: %s", reason)
            markdown = summary_markdown(cfg, "thawline retrain flow", outcomes, run_id, reasons)
    create_markdown_artifact(markdown, key="thawline-retrain", description="retrain flow run")
    action = "finetune" if decision.strategy == "finetune" else "head"
    return {"action": action, "reasons": reasons, "images_computed": computed,
            "stages": [vars(o) for o in outcomes]}  # fmt: skip


if __name__ == "__main__":
    retrain()
