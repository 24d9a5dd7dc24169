"""One MLflow run per stage, grouped under one parent run per pipeline execution.

Loops never log: they call ``on_epoch_end`` / ``on_candidate``, which the caller points at the
:class:`~thawline.tracking.tracker.Tracker` of its stage's run. The parent run is
``$THAWLINE_PARENT_RUN_ID`` when set (a Prefect flow opens one with :func:`pipeline_run`);
otherwise it is found or created by a pipeline key, the hash of the config and the git commit,
so the separate processes of one ``dvc repro`` share a parent.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import mlflow
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from thawline.config import Config, dump_config
from thawline.errors import Interrupted
from thawline.tracking.provenance import flatten, pipeline_key, run_tags
from thawline.tracking.store import Store, connect, store_lock, with_retry
from thawline.tracking.tracker import TAG_PIPELINE, TAG_ROLE, TAG_STAGE, NullTracker, Tracker

log = logging.getLogger(__name__)
PARENT_ENV = "THAWLINE_PARENT_RUN_ID"


@contextlib.contextmanager
def stage_run(cfg: Config, stage: str) -> Iterator[Tracker | NullTracker]:
    """Open the MLflow run of one stage, nested under the pipeline's parent run.

    Tags the run with the stage, backbone, git commit and data/feature fingerprints. An
    exception inside the block marks the run FAILED (KILLED for Ctrl-C, SIGTERM) and is re-raised.
    Re-entering for the stage whose run is already active (the CLI wraps a stage that opens its
    own run) yields that run again.

    Yields:
        A :class:`Tracker` for ``stage`` (a :class:`NullTracker` when ``tracking.enabled`` is
        false).
    """
    if not cfg.tracking.enabled:
        yield NullTracker()
        return
    store = connect(cfg)
    active = mlflow.active_run()
    if active is not None and active.data.tags.get(TAG_STAGE) == stage:
        yield Tracker(store, active.info.run_id, active.data.tags.get(MLFLOW_PARENT_RUN_ID))
        return
    parent, owned = (None, False) if active is not None else _parent_run(store, cfg)
    tags = {TAG_STAGE: stage, TAG_ROLE: "stage", TAG_PIPELINE: pipeline_key(cfg)}
    run = with_retry(
        lambda: mlflow.start_run(
            experiment_id=store.experiment_id,
            run_name=stage,
            parent_run_id=parent,
            nested=active is not None,
            tags=tags | run_tags(cfg),
        )
    )
    tracker = Tracker(store, run.info.run_id, parent)
    try:  # params: only those the stage reads (the CLI logs them); the parent has them all
        if owned:
            with_retry(lambda: store.client.update_run(parent, status="RUNNING"))
        yield tracker
    except BaseException as err:
        status = "KILLED" if isinstance(err, KeyboardInterrupt | Interrupted) else "FAILED"
        try:
            tracker.set_tags({"thawline.error": f"{type(err).__name__}: {err}"[:5000]})
            _finish(tracker, cfg, status, parent if owned else None)
        except Exception as secondary:  # never hide the stage's own error
            log.warning("could not mark MLflow run %s %s: %s", run.info.run_id, status, secondary)
            with contextlib.suppress(Exception):
                _end_run(store, run.info.run_id, status)
        raise
    _finish(tracker, cfg, "FINISHED", parent if owned else None)


@contextlib.contextmanager
def pipeline_run(cfg: Config, name: str = "pipeline") -> Iterator[str | None]:
    """A parent run for the stages run inside the block (for orchestrators such as Prefect).

    Sets ``$THAWLINE_PARENT_RUN_ID`` for the block, so every :func:`stage_run` in this process
    nests under it, and marks it FINISHED or FAILED at the end.

    Yields:
        The parent run id (None when tracking is disabled).
    """
    if not cfg.tracking.enabled:
        yield None
        return
    store = connect(cfg)
    run_id = _create_parent(store, cfg, name, key=None)  # its stages find it by the variable
    previous = os.environ.get(PARENT_ENV)
    os.environ[PARENT_ENV] = run_id
    status = "FAILED"
    try:
        yield run_id
        status = "FINISHED"
    finally:
        if previous is None:
            os.environ.pop(PARENT_ENV, None)
        else:
            os.environ[PARENT_ENV] = previous
        with_retry(lambda: store.client.set_terminated(run_id, status))


def _parent_run(store: Store, cfg: Config) -> tuple[str, bool]:
    """``(parent run id, whether this process keeps its status)``; see the module docstring."""
    if from_env := os.environ.get(PARENT_ENV):
        return from_env, False
    key = pipeline_key(cfg)
    query = f"tags.`{TAG_PIPELINE}` = '{key}' and tags.`{TAG_ROLE}` = 'pipeline'"
    with store_lock(store.uri):  # two processes must not both create the parent
        found = with_retry(
            lambda: store.client.search_runs(
                [store.experiment_id], query, max_results=1, order_by=["attributes.start_time"]
            )
        )
        if found:
            return found[0].info.run_id, True
        return _create_parent(store, cfg, f"pipeline {key[:8]}", key=key), True


def _create_parent(store: Store, cfg: Config, name: str, key: str | None) -> str:
    """A parent run; with a pipeline ``key``, later stage processes find it by that key."""
    tags = {TAG_ROLE: "pipeline"} | ({TAG_PIPELINE: key} if key else {}) | run_tags(cfg)
    run = with_retry(lambda: store.client.create_run(store.experiment_id, tags=tags, run_name=name))
    Tracker(store, run.info.run_id).log_params(flatten(dump_config(cfg)))
    return run.info.run_id


def _finish(tracker: Tracker, cfg: Config, status: str, parent: str | None) -> None:
    tracker.set_tags(run_tags(cfg))  # a stage may have just written the fingerprints
    _end_run(tracker.store, tracker.run_id, status)
    if parent is not None:
        with_retry(lambda: tracker.store.client.set_terminated(parent, status))


def _end_run(store: Store, run_id: str, status: str) -> None:
    """Mark ``run_id`` ended, then pop it if it is still MLflow's active run (never an outer one).

    The status goes through the client first: ``mlflow.end_run`` pops the run before writing, so
    a locked database there would leave it RUNNING with no way to retry.
    """
    with_retry(lambda: store.client.set_terminated(run_id, status))
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        with contextlib.suppress(Exception):  # its status is already written
            mlflow.end_run(status)
