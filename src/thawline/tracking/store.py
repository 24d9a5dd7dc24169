"""Where runs and models live: the tracking URI, the experiment, and SQLite's concurrency limits.

SQLite allows one writer at a time. MLflow waits for the lock (``busy_timeout``), but a
transaction that started reading and then wants to write gets ``database is locked`` at once, so
every write here goes through :func:`with_retry`. Read-decide-write sequences that must not
interleave across processes (the champion gate, finding the parent run) take :func:`store_lock`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

from thawline.config import Config
from thawline.errors import TrackingError

DEFAULT_URI = "sqlite:///mlflow.db"
T = TypeVar("T")


@dataclass(frozen=True)
class Store:
    """A connected tracking store and the experiment that stage runs go to."""

    uri: str
    client: MlflowClient
    experiment_id: str


@contextlib.contextmanager
def mlflow_errors() -> Iterator[None]:
    """MLflow's own exceptions as :class:`TrackingError`: callers outside this package catch
    thawline's base error and never import mlflow."""
    try:
        yield
    except MlflowException as err:
        raise TrackingError(f"MLflow: {err.message}") from err


def tracking_uri(cfg: Config | None = None) -> str:
    """``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else MLflow 3's default SQLite file."""
    configured = cfg.tracking.uri if cfg is not None else None
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative or absolute), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0])


def connect(cfg: Config) -> Store:
    """Point MLflow at the configured store and get (or create) the experiment.

    For a local SQLite store, a new experiment keeps its artifacts in ``tracking.artifacts``;
    a tracking server decides for itself.
    """
    uri = tracking_uri(cfg)
    location = cfg.tracking.artifacts.resolve().as_uri() if sqlite_path(uri) else None
    client = client_for(uri)
    with store_lock(uri):
        experiment_id = with_retry(lambda: _experiment(client, cfg.tracking.experiment, location))
    return Store(uri, client, experiment_id)


def client_for(uri: str | None = None) -> MlflowClient:
    """A client for ``uri`` (default: as :func:`tracking_uri`), also set as MLflow's default."""
    uri = uri or tracking_uri()
    mlflow.set_tracking_uri(uri)
    with store_lock(uri):  # a client's first connection creates the schema: one at a time
        return with_retry(lambda: MlflowClient(tracking_uri=uri))


def _experiment(client: MlflowClient, name: str, location: str | None) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException as err:  # another process created it first
        if err.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
        return client.get_experiment_by_name(name).experiment_id


def with_retry(action: Callable[[], T], attempts: int = 10, wait: float = 0.05) -> T:
    """Run ``action``, retrying with jittered exponential backoff while SQLite is locked."""
    for attempt in range(attempts):
        try:
            return action()
        except Exception as err:
            if attempt == attempts - 1 or not is_locked(err):
                raise
            time.sleep(wait * 2**attempt * (0.5 + random.random()))
    raise AssertionError("unreachable")


def is_locked(err: BaseException) -> bool:
    """Whether an error (or its cause) is SQLite's transient ``database is locked``."""
    while err is not None:
        if "database is locked" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serialise a read-decide-write sequence among processes sharing one SQLite store.

    The lock is a separate file beside the database (never the database itself: closing any
    descriptor of it would drop SQLite's own POSIX locks). Other stores get no lock.
    """
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    lock = path.with_name(path.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
