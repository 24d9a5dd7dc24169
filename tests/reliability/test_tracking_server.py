"""The tracking server dies mid-stage (RELIABILITY.md 25): a real ``mlflow server`` on loopback,
SIGKILLed while ``train_head`` logs its epochs. The stage fails with a line that names the server
and the remedy and leaves nothing a later stage trusts; with the server back, the rerun logs as
usual."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from mlflow import MlflowClient

from tests.conftest import REPO, small_config, stage_command
from tests.servers import VENV_BIN, background_server, free_port, server_env
from thawline.errors import CRASH
from thawline.stages import extract


def tracking_server(folder, port: int):
    command = [str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
               "--default-artifact-root", str(folder / "artifacts"),
               "--artifacts-destination", str(folder / "artifacts")]  # fmt: skip
    return background_server(command, f"http://127.0.0.1:{port}/health", folder, server_env())


def stage_runs(base: str, stage: str) -> list:
    client = MlflowClient(tracking_uri=base)
    experiment = client.get_experiment_by_name("thawline")
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], f"tags.`thawline.stage` = '{stage}'")


def unreachable_line(base: str) -> str:
    return (
        f"thawline: train_head failed: tracking server {base} is unreachable (max retries "
        "exceeded); start it again, or point MLFLOW_TRACKING_URI (or tracking.uri) at one "
        "that runs, then rerun: this stage's outputs are not used until it succeeds"
    )


def test_a_tracking_server_that_does_not_answer_is_one_line_and_exit_3(prepared_small, tmp_path):
    """The fast suite's half of case 25: nothing listens on the port (the slow test below kills
    a real server mid-stage and brings it back)."""
    cfg = small_config(tmp_path, paths={"prepared": str(prepared_small.paths.prepared)})
    extract.run(cfg.model_copy(update={"tracking": cfg.tracking.model_copy(
        update={"enabled": False})}), progress=False)  # fmt: skip
    base = f"http://127.0.0.1:{free_port()}"
    env = server_env(MLFLOW_TRACKING_URI=base, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0")
    done = subprocess.run(stage_command(cfg, tmp_path, "train_head"), cwd=REPO, env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == CRASH, done.stderr[-3000:]
    said = [line for line in done.stderr.splitlines() if line.startswith("thawline: train_head")]
    assert said == [unreachable_line(base)] and "Traceback" not in done.stderr
    assert not (cfg.paths.head / "head.safetensors").exists()


@pytest.mark.slow
def test_a_tracking_server_killed_mid_stage_fails_it_clearly_and_the_rerun_logs(
    prepared_small, tmp_path
):
    cfg = small_config(
        tmp_path,
        paths={"prepared": str(prepared_small.paths.prepared)},
        head={"epochs": 150, "patience": 0},  # seconds of per-epoch logging to die in
    )
    extract.run(cfg.model_copy(update={"tracking": cfg.tracking.model_copy(
        update={"enabled": False})}), progress=False)  # fmt: skip
    command = stage_command(cfg, tmp_path, "train_head")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # One attempt per request: MLflow's default retries would wait about two minutes first.
    env = server_env(MLFLOW_TRACKING_URI=base, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
                     MLFLOW_HTTP_REQUEST_TIMEOUT="10")  # fmt: skip
    with tracking_server(tmp_path, port) as server:
        stage = subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not stage_runs(base, "train_head"):
            assert stage.poll() is None and time.monotonic() < deadline, stage.stderr.read()
            time.sleep(0.2)
        time.sleep(0.3)  # it is logging epochs now
        os.killpg(server.pid, signal.SIGKILL)
        stderr = stage.communicate(timeout=120)[1]
    assert stage.returncode == CRASH, stderr[-3000:]  # the environment: flows retry it
    said = [line for line in stderr.splitlines() if line.startswith("thawline: train_head")]
    assert said == [unreachable_line(base)], stderr[-3000:]
    assert "Traceback" not in stderr
    assert not (cfg.paths.head / "head.safetensors").exists()  # nothing a later stage trusts
    with tracking_server(tmp_path, port):  # back, with the same store
        again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        assert again.returncode == 0, again.stderr[-3000:]
        statuses = sorted(run.info.status for run in stage_runs(base, "train_head"))
    assert statuses == ["FINISHED", "RUNNING"]  # the first could not be marked: it had no server
