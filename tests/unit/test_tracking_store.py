"""Tracking store helpers: URI resolution and the retry on SQLite's ``database is locked``."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException

from tests.conftest import small_config
from thawline.tracking.provenance import flatten
from thawline.tracking.store import DEFAULT_URI, is_transient, sqlite_path, tracking_uri, with_retry


def test_uri_comes_from_config_then_environment_then_default(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert DEFAULT_URI == "sqlite:///mlflow.db"  # relative to the project, made absolute:
    assert tracking_uri(small_config(tmp_path)) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri(small_config(tmp_path)) == "http://127.0.0.1:5000"
    configured = small_config(tmp_path, tracking={"uri": "sqlite:////data/runs.db"})
    assert tracking_uri(configured) == "sqlite:////data/runs.db"
    assert sqlite_path("sqlite:////data/runs.db") == Path("/data/runs.db")
    assert sqlite_path("sqlite:///mlflow.db") == Path("mlflow.db")
    assert sqlite_path("http://127.0.0.1:5000") is None


def test_locked_database_is_retried_other_errors_are_not():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            try:
                raise sqlite3.OperationalError("database is locked")
            except sqlite3.OperationalError as err:  # as MLflow wraps it
                raise MlflowException("(sqlite3.OperationalError) ...") from err
        return "done"

    assert with_retry(flaky, wait=0.001) == "done" and len(calls) == 3
    assert is_transient(MlflowException("x")) is False
    # Two processes setting the same new alias at once: the slower insert loses the race.
    race = sqlite3.IntegrityError(
        "UNIQUE constraint failed: registered_model_aliases.workspace, "
        "registered_model_aliases.name, registered_model_aliases.alias"
    )
    assert is_transient(MlflowException(str(race))) is True
    assert is_transient(sqlite3.IntegrityError("UNIQUE constraint failed: runs.run_uuid")) is False

    def broken():
        calls.append(1)
        raise ValueError("not a lock")

    calls.clear()
    with pytest.raises(ValueError):
        with_retry(broken, wait=0.001)
    assert len(calls) == 1


def test_config_flattens_to_dotted_params():
    flat = flatten({"head": {"lr": 0.001, "hidden": [512], "sweep": {"enabled": False}}, "x": None})
    assert flat == {
        "head.lr": "0.001",
        "head.hidden": "[512]",
        "head.sweep.enabled": "false",
        "x": "null",
    }


def test_the_store_belongs_to_the_project_even_from_a_dvc_temp_copy(tmp_path, monkeypatch):
    """DVC runs --temp and queued experiments in <project>/.dvc/tmp/exps/<copy> and sets
    $DVC_ROOT to the project; a relative store there used to be deleted with the copy."""
    from thawline.tracking.store import artifact_root, in_temp_copy, project_root

    project = tmp_path / "project"
    copy = project / ".dvc" / "tmp" / "exps" / "tmpabc123"
    copy.mkdir(parents=True)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(copy)
    monkeypatch.setenv("DVC_ROOT", str(project))
    monkeypatch.setenv("DVC_EXP_NAME", "sweep-1")
    cfg = small_config(tmp_path)
    assert tracking_uri(cfg) == f"sqlite:///{project.resolve()}/mlflow.db"
    assert artifact_root(cfg.model_copy(update={"tracking": cfg.tracking.model_copy(
        update={"artifacts": Path("mlruns")})})) == project.resolve() / "mlruns"  # fmt: skip
    assert in_temp_copy()
    monkeypatch.delenv("DVC_ROOT")  # outside DVC's own runs the folder layout tells
    assert project_root() == project.resolve() and in_temp_copy()
    monkeypatch.chdir(project)
    monkeypatch.setenv("DVC_ROOT", str(project))
    assert not in_temp_copy()  # a workspace `dvc exp run` (make full) may move champion


def test_the_store_lock_is_reentrant_within_a_thread_and_exclusive_across_processes(tmp_path):
    """The gate holds it while loading the champion, which connects to the same store: that
    second acquisition used to wait forever."""
    import subprocess
    import sys

    from thawline.tracking.store import store_lock

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    probe = ("import fcntl, sys; f = open(sys.argv[1], 'a')\n"
             "try: fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
             "except BlockingIOError: sys.exit(3)")  # fmt: skip
    with store_lock(uri), store_lock(uri):  # no deadlock
        held = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "mlflow.db.lock")])
        assert held.returncode == 3  # another process is kept out
    free = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "mlflow.db.lock")])
    assert free.returncode == 0
