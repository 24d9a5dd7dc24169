"""Where runs and models live: the tracking URI, the experiment, and SQLite's concurrency limits.

The local store belongs to the project, not to the folder a process happens to run in: DVC runs
``dvc exp run --temp`` and queued experiments in a throw-away copy under ``.dvc/tmp/exps/``, and
sets ``$DVC_ROOT`` to the original workspace, so a relative ``sqlite:///mlflow.db`` and the
``tracking.artifacts`` folder are resolved against that (:func:`project_root`). MLflow records
artifact locations as absolute ``file://`` URIs; :func:`relocated` finds them again after the
project folder was moved (the artifact folder is looked for beside the database).

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
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, urlparse

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

from thawline.config import Config
from thawline.errors import RefusedInputError, RegistryError, TrackingError, TrackingUnreachable
from thawline.tracking.refusals import InputRefused

_held_locks = threading.local()  # the store locks this thread holds (store_lock is reentrant)
DEFAULT_URI = "sqlite:///mlflow.db"  # relative to the project root (project_root)
# MLflow 3's UI opens an experiment without this tag as a GenAI app (traces, prompts).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
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
    except InputRefused as err:  # the input's fault, not the store's: exit 2, no "MLflow:"
        raise RefusedInputError(err.message) from None
    except MlflowException as err:
        uri = mlflow.get_tracking_uri()
        if uri.startswith(("http://", "https://")) and unreachable(err):
            raise TrackingUnreachable(
                f"tracking server {uri} is unreachable ({_first_reason(err.message)}); start it "
                "again, or point MLFLOW_TRACKING_URI (or tracking.uri) at one that runs, then "
                "rerun: this stage's outputs are not used until it succeeds"
            ) from err
        raise TrackingError(f"MLflow: {err.message}") from err


# What MLflow's REST client says once its retries (MLFLOW_HTTP_REQUEST_MAX_RETRIES, with
# backoff: about two minutes by default) found no server.
UNREACHABLE = ("Max retries exceeded", "Connection refused", "Failed to establish a new connection",
               "Connection aborted", "RemoteDisconnected", "Read timed out")  # fmt: skip


def unreachable(err: MlflowException) -> bool:
    return any(sign in str(err.message) for sign in UNREACHABLE)


def _first_reason(message: str) -> str:
    for sign in UNREACHABLE:
        if sign in message:
            return sign.lower()
    return "no answer"


def project_root() -> Path:
    """The project this process works for: ``$DVC_ROOT`` (DVC sets it to the original workspace
    in every stage it runs, experiments in temp copies included), else the folder above a
    ``.dvc/tmp/exps/`` copy, else the DVC project around the current folder (a pipeline in a
    subfolder, such as examples/text, shares its project's store), else the current folder."""
    if root := os.environ.get("DVC_ROOT"):
        return Path(root).resolve()
    here = Path.cwd().resolve()
    if (copied := _temp_copy_of(here)) is not None:
        return copied
    for folder in (here, *here.parents):
        if (folder / ".dvc").is_dir():
            return folder
    return here


def _temp_copy_of(path: Path) -> Path | None:
    """The project whose ``.dvc/tmp/exps/`` holds ``path``, if it is in such a copy."""
    parts = path.parts
    if ".dvc" in parts:
        at = parts.index(".dvc")
        if parts[at + 1 : at + 3] == ("tmp", "exps"):
            return Path(*parts[:at])
    return None


def experiment_name() -> str | None:
    """The DVC experiment this process runs for (``$DVC_EXP_NAME``), if any."""
    return os.environ.get("DVC_EXP_NAME") or None


def in_temp_copy() -> bool:
    """Whether this runs in a DVC experiment's throw-away copy (``--temp``, ``--queue``)."""
    here = Path.cwd().resolve()
    outside = not here.is_relative_to(project_root())
    return experiment_name() is not None and (outside or _temp_copy_of(here) is not None)


def tracking_uri(cfg: Config | None = None) -> str:
    """``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``; a relative
    SQLite path is made absolute against :func:`project_root`."""
    configured = cfg.tracking.uri if cfg is not None else None
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    path = sqlite_path(uri)
    if path is None or path.is_absolute():
        return uri
    query = uri.partition("?")[2]
    return f"sqlite:///{project_root() / path}" + (f"?{query}" if query else "")


def artifact_root(cfg: Config) -> Path:
    """``tracking.artifacts``, against :func:`project_root` when relative."""
    return project_root() / cfg.tracking.artifacts


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
    location = artifact_root(cfg).as_uri() if sqlite_path(uri) else None
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
        if not found.tags.get("mlflow.experimentKind"):  # a store from before this tag
            for key, value in EXPERIMENT_KIND.items():
                client.set_experiment_tag(found.experiment_id, key, value)
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
    except MlflowException as err:  # another process created it first
        if err.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
        return client.get_experiment_by_name(name).experiment_id


def relocated(client: MlflowClient, uri: str, experiment_id: str) -> str:
    """An artifact URI that exists here: ``uri`` itself, or the same path under the artifact
    folder beside the SQLite database when the project was moved since it was recorded.

    Raises:
        RegistryError: Neither exists; the message names both places and what to do.
    """
    if not uri.startswith("file:"):
        return uri  # a server or object store resolves its own URIs
    path = Path(unquote(urlparse(uri).path))
    if path.exists():
        return uri
    database = sqlite_path(client.tracking_uri)
    old_root = Path(unquote(urlparse(client.get_experiment(experiment_id).artifact_location).path))
    moved = None
    if database is not None and path.is_relative_to(old_root):
        moved = database.resolve().parent / old_root.name / path.relative_to(old_root)
        if moved.exists():
            return moved.as_uri()
    where = f"{path}" + (f" nor at {moved}" if moved else "")
    raise RegistryError(
        f"artifact missing: not at {where}. The store records it under {old_root}; if the "
        f"project moved, keep the database and its '{old_root.name}' folder side by side, or "
        "point MLFLOW_TRACKING_URI at the store that holds it"
    )


def with_retry(action: Callable[[], T], attempts: int = 10, wait: float = 0.05) -> T:
    """Run ``action``, retrying with jittered exponential backoff while SQLite is locked or
    another process won an alias insert race (see ``is_transient``)."""
    for attempt in range(attempts):
        try:
            return action()
        except Exception as err:
            if attempt == attempts - 1 or not is_transient(err):
                raise
            time.sleep(wait * 2**attempt * (0.5 + random.random()))
    raise AssertionError("unreachable")


# MLflow's SQL store sets an alias by reading it, then inserting it when absent: two processes
# doing so at once make the slower insert fail on the unique key. A retry finds the row and
# updates it, which is what the caller asked for.
TRANSIENT = ("database is locked", "UNIQUE constraint failed: registered_model_aliases")


def is_transient(err: BaseException) -> bool:
    """Whether an error (or its cause) is SQLite's ``database is locked`` or a lost alias race."""
    while err is not None:
        if any(sign in str(err) for sign in TRANSIENT):
            return True
        err = err.__cause__ or err.__context__
    return False


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serialise a read-decide-write sequence among processes sharing one SQLite store.

    The lock is a separate file beside the database (never the database itself: closing any
    descriptor of it would drop SQLite's own POSIX locks). Other stores get no lock. It is
    reentrant within a thread: the gate holds it while it loads the champion to score it, and
    loading connects to the same store (a second ``flock`` on a new descriptor would wait for
    the first forever).
    """
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    lock = path.with_name(path.name + ".lock").resolve()
    held = _held_locks.__dict__.setdefault("paths", set())
    if lock in held:
        yield
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        held.add(lock)
        try:
            yield
        finally:
            held.discard(lock)
            fcntl.flock(handle, fcntl.LOCK_UN)
