"""What a stage logs to its MLflow run: metrics per epoch and at the end, params, tags, its
small readable outputs and sweep candidates (tracking/runs.py opens and closes the runs).

:class:`NullTracker` takes the same calls and does nothing (``tracking.enabled: false``), so
stages log the same way whether tracking is on or off.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from mlflow.utils.time import get_current_time_millis

from thawline.config import Config
from thawline.stage_table import StageResult
from thawline.tracking.provenance import flatten, read_params
from thawline.tracking.store import Store, with_retry

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
