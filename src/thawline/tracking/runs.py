"""One MLflow run per stage, grouped under one parent run per pipeline execution.

Loops never log: they call ``on_epoch_end`` / ``on_candidate``, which the caller points at a
:class:`Tracker`. The parent run is ``$THAWLINE_PARENT_RUN_ID`` when set (a Prefect flow opens
one with :func:`pipeline_run`); otherwise it is found or created by a pipeline key, the hash of
the config and the git commit, so the separate processes of one ``dvc repro`` share a parent.
"""

from __future__ import annotations

import contextlib
import json
import logging
import numbers
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from mlflow.utils.time import get_current_time_millis

from thawline.config import Config, dump_config
from thawline.errors import Interrupted
from thawline.stage_table import StageResult
from thawline.tracking.provenance import flatten, pipeline_key, read_params, run_tags
from thawline.tracking.store import Store, connect, store_lock, with_retry

log = logging.getLogger(__name__)
PARENT_ENV = "THAWLINE_PARENT_RUN_ID"
TAG_STAGE, TAG_ROLE, TAG_PIPELINE = "thawline.stage", "thawline.role", "thawline.pipeline_key"
# Outputs small and readable enough to keep with a run; tensors stay in DVC's cache.
ARTIFACT_SUFFIXES = {".json", ".png", ".csv", ".html", ".txt", ".md", ".yaml", ".svg", ".tsv"}
MAX_ARTIFACT_BYTES, MAX_ARTIFACT_FILES = 20 << 20, 200


class Tracker:
    """Logs to one MLflow run; every write is retried while SQLite is locked."""

    def __init__(self, store: Store, run_id: str, parent_id: str | None = None):
        self.store = store
        self.run_id = run_id
        self.parent_id = parent_id  # the pipeline's run: it carries the headline figures
        self._epoch_keys: set[str] = set()

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """The ``on_epoch_end`` callback: metrics at step ``epoch``."""
        self._epoch_keys.update(metrics)
        self.log_metrics(metrics, step=epoch)

    def log_final(self, metrics: dict[str, Any]) -> None:
        """End-of-run values; one under a name already logged per epoch becomes
        ``final_<name>``: at step 0 of the epoch curve it would draw a dip that never happened."""
        self.log_metrics({f"final_{k}" if k in self._epoch_keys else k: v
                          for k, v in metrics.items()})  # fmt: skip

    def log_headline(self, metrics: dict[str, float], tags: dict[str, Any]) -> None:
        """The pipeline's outcome on its parent run (this run itself when it has none), so the
        experiment's run table shows each model's accuracy, the choice and the gate."""
        target = Tracker(self.store, self.parent_id) if self.parent_id else self
        target.log_metrics(metrics)
        target.set_tags(tags)

    def log_metrics(self, metrics: dict[str, Any], step: int = 0) -> None:
        now = get_current_time_millis()
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if _is_number(v)]
        for start in range(0, len(batch), 1000):  # MLflow's batch limit
            chunk = batch[start : start + 1000]
            with_retry(lambda c=chunk: self.store.client.log_batch(self.run_id, metrics=c))

    def set_tags(self, tags: dict[str, Any]) -> None:
        items = [RunTag(k, str(v)) for k, v in tags.items() if v is not None]
        for start in range(0, len(items), 100):
            chunk = items[start : start + 100]
            with_retry(lambda c=chunk: self.store.client.log_batch(self.run_id, tags=c))

    def log_read_params(self, cfg: Config, reads: set[str]) -> None:
        """The params a stage read (``record_reads``), not the whole config (about 100)."""
        self.log_params(read_params(cfg, reads))

    def log_params(self, params: dict[str, str]) -> None:
        items = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(items), 100):
            chunk = items[start : start + 100]
            with_retry(lambda c=chunk: self.store.client.log_batch(self.run_id, params=c))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        with_retry(lambda: self.store.client.log_artifact(self.run_id, str(path), artifact_path))

    def log_result(self, result: StageResult) -> None:
        """A stage's metrics, its small readable outputs (json, png, csv...) and its info."""
        self.log_final(result.metrics)
        for name, path in result.outputs.items():
            for file, folder in _small_files(Path(path), name):
                self.log_artifact(file, folder)
        if result.info:
            info = json.loads(json.dumps(result.info, default=str))
            with_retry(lambda: self.store.client.log_dict(self.run_id, info, "stage_info.json"))

    def log_candidate(
        self, params: dict[str, Any], metrics: dict[str, float], history: list[dict[str, float]]
    ) -> None:
        """One sweep candidate as a finished child run: its params, curves and final metrics."""
        tags = {MLFLOW_PARENT_RUN_ID: self.run_id, TAG_ROLE: "candidate"}
        name = "candidate " + " ".join(f"{k}={v}" for k, v in params.items())
        run = with_retry(
            lambda: self.store.client.create_run(self.store.experiment_id, tags=tags, run_name=name)
        )
        child = Tracker(self.store, run.info.run_id)
        child.log_params(flatten(params))
        for row in history:
            epoch = int(row.get("epoch", 0))
            child.log_epoch(epoch, {k: v for k, v in row.items() if k != "epoch"})
        child.log_final(metrics)
        with_retry(lambda: self.store.client.set_terminated(child.run_id, "FINISHED"))


class NullTracker:
    """What :func:`stage_run` yields with ``tracking.enabled: false``: every call does nothing."""

    run_id = None
    store = None

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, Any], step: int = 0) -> None:
        pass

    def set_tags(self, tags: dict[str, Any]) -> None:
        pass

    def log_params(self, params: dict[str, str]) -> None:
        pass

    def log_read_params(self, cfg: Config, reads: set[str]) -> None:
        pass

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        pass

    def log_result(self, result: StageResult) -> None:
        pass

    def log_final(self, metrics: dict[str, Any]) -> None:
        pass

    def log_headline(self, metrics: dict[str, float], tags: dict[str, Any]) -> None:
        pass

    def log_candidate(self, params: dict, metrics: dict, history: list) -> None:
        pass


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


def _small_files(path: Path, name: str) -> Iterator[tuple[Path, str]]:
    """``(file, artifact folder)`` for each small readable file of an output (never tensors)."""
    if path.is_file():
        candidates = [(path, name)]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        candidates = [
            (f, "/".join([name, *f.relative_to(path).parent.parts]))
            for f in files
            if not any(part.startswith(".") for part in f.relative_to(path).parts)
        ]
    else:
        candidates = []
    kept = [
        (f, folder)
        for f, folder in candidates
        if f.suffix.lower() in ARTIFACT_SUFFIXES and f.stat().st_size <= MAX_ARTIFACT_BYTES
    ]
    yield from kept[:MAX_ARTIFACT_FILES]


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real)  # int, float, bool and numpy scalars
