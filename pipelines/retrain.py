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
from pipelines.stages import StageOutcome, stage_task
from pipelines.summary import summary_markdown
from pipelines.training import training
from thawline.config import Config
from thawline.features.cache import read_cache_manifest
from thawline.files import read_json
from thawline.models.head import SPEC
from thawline.stages.prepare import SourceCheck, check_source
from thawline.tracking import pipeline_run
from thawline.training.strategy import probe_accuracy, should_escalate


@task(name="check data source", cache_policy=NO_CACHE, persist_result=False)
def check_data(cfg: Config) -> SourceCheck:
    return check_source(cfg)


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
        if not (cfg.paths.prepared / "manifest.json").is_file():
            logger.info("retrain: nothing trained yet: running the whole training flow")
            stages = training(params)
            computed = read_cache_manifest(cfg.paths.features)["images_computed"]
            return {"action": "initial", "reasons": [check.reason], "stages": stages,
                    "images_computed": computed}  # fmt: skip
        reasons = [check.reason]
        outcomes: list[StageOutcome] = []
        with pipeline_run(cfg, "retrain-flow") as run_id:
            # Forced: DVC's state keys on size and mtime and can miss an in-place rewrite.
            outcomes.append(stage_task(cfg, "prepare")("prepare", repo, force=True))
            for stage in ("extract", "train_head"):
                outcomes.append(stage_task(cfg, stage)(stage, repo))
            computed = int(read_cache_manifest(cfg.paths.features).get("images_computed", 0))
            reasons.append(f"{computed} new or changed images went through the backbone")
            probe = probe_accuracy(read_json(cfg.paths.head / SPEC))
            decision = should_escalate(cfg.retrain.finetune, cfg.retrain.escalate_below, probe)
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
