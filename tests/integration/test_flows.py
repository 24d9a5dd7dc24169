"""The Prefect flows against a real DVC project in tmp_path and a real ``prefect server start`` on
127.0.0.1: the training flow end to end and its agreement with ``dvc repro``; a transient failure
retried; the retrain flow's tiers; the deployments and their schedules; ``dvc push``/``dvc pull``
to the local remote; ``dvc exp run``. The flow's extract task runs under torchrun (2 processes).

Flows run as ``thawline flow ...`` processes, as users run them. (In this process they would
leave Prefect's at-exit services behind, and every later fork, e.g. a DataLoader worker in
another test, dies on them: Prefect's ``QueueService._at_exit`` asserts in the child.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
import zc.lockfile
from PIL import Image

from tests.conftest import REPO, makefile_overrides, write_folder
from tests.servers import VENV_BIN, background_server, free_port, server_env
from thawline.config import load_config
from thawline.stage_table import NAMES as STAGES

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@localhost",
    "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@localhost",
}  # fmt: skip


def sh(repo: Path, *args: str, check: bool = True, env: dict | None = None) -> str:
    env = (env or os.environ) | GIT_ENV | {"PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True)
    assert not check or proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def dvc(repo: Path, *args: str) -> str:
    return sh(repo, sys.executable, "-m", "dvc", *args)


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    """A real Prefect server on a free loopback port; yields the environment that points at it."""
    folder = tmp_path_factory.mktemp("prefect")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = server_env(PREFECT_HOME=str(folder / "home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                     PREFECT_API_URL=api, COLUMNS="200")  # fmt: skip
    server = [str(VENV_BIN / "prefect"), "server", "start", "--port", str(port)]
    with background_server(server, f"{api}/health", folder, env):
        yield env


def thawline_flow(env: dict, *args: str):
    """``thawline flow <args>`` in a process of its own; its JSON result."""
    proc = subprocess.run([str(VENV_BIN / "thawline"), "flow", *args], env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    thawline_flow.stderr = proc.stderr  # the flow's log, for tests that read it
    return json.loads(proc.stdout)


def training(env: dict, project: Path, *overrides: str) -> list[dict]:
    sets = [item for o in overrides for item in ("-S", o)]
    return thawline_flow(env, "run", "-p", str(project / "params.yaml"), *sets)


def retrain(env: dict, project: Path) -> dict:
    return thawline_flow(env, "retrain", "-p", str(project / "params.yaml"))


@pytest.fixture(scope="module")
def project(tmp_path_factory, fashion_mnist_arrays) -> Path:
    """A git + DVC project: this repo's dvc.yaml and src/, 150 images in a folder at 32 px."""
    images, labels = fashion_mnist_arrays
    base = tmp_path_factory.mktemp("flows")
    repo = base / "project"
    repo.mkdir()
    write_folder(base / "photos", images[:150], labels[:150])
    shutil.copy(REPO / "dvc.yaml", repo / "dvc.yaml")
    shutil.copytree(REPO / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__"))
    # examples/text/ as in this repo: a DVC project of its own (outputs never built here) that the
    # root's dvc status, push and exp run must leave alone.
    shutil.copytree(
        REPO / "examples" / "text",
        repo / "examples" / "text",
        ignore=shutil.ignore_patterns("data", "models", "reports", "cache", "tmp", "mlflow.db*"),
    )
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"] |= {"source": "imagefolder", "root": str(base / "photos")}
    params["prepare"] |= {"test_fraction": 0.2}
    params["extract"] |= {"image_size": 32, "nproc": 2}  # the extract task runs under torchrun
    params["head"] |= {"epochs": 5}
    params["finetune"] |= {"image_size": 32, "epochs_per_phase": 1, "batch_size": 32}
    params["scratch"]["enabled"] = False
    params["tracking"]["uri"] = f"sqlite:///{repo / 'mlflow.db'}"
    params["flow"] |= {"retries": 2, "retry_delay_s": 1}
    params["registry"]["onnx"] = False  # ~10 s a registration; test_export.py tests it
    params["evaluate"]["cams"] = False  # test_evaluate.py tests them
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    (repo / ".gitignore").write_text("/mlflow.db\n/mlruns/\n/models/checkpoints/\n")
    sh(repo, "git", "init", "-q")
    dvc(repo, "init", "-q")
    dvc(repo, "config", "core.analytics", "false")
    dvc(repo, "remote", "add", "-d", "local", str(base / "remote"))
    return repo


def ran(outcomes) -> list[str]:
    return [o["stage"] for o in outcomes if o["ran"]]


def test_training_flow_runs_every_stage_and_agrees_with_dvc(prefect_api, project):
    first = training(prefect_api, project)
    assert ran(first) == list(STAGES)
    assert "distributed: 2 processes (gloo)" in thawline_flow.stderr  # extract.nproc: 2
    assert "Data and pipelines are up to date" in dvc(project, "status")
    assert "Running stage" not in dvc(project, "repro")  # dvc repro after the flow: nothing
    # The flow after DVC runs only what a changed param reaches: the next test.
    assert json.loads((project / "reports" / "registration.json").read_text())["version"] == 1
    artifacts = sh(project, str(VENV_BIN / "prefect"), "artifact", "inspect", "thawline-training",
                   env=prefect_api)  # fmt: skip
    assert "Champion gate" in artifacts and "| register |" in artifacts


def test_flow_overrides_go_to_params_and_rerun_only_what_reads_them(prefect_api, project):
    tuned = training(prefect_api, project, "evaluate.calibration_bins=10")
    assert ran(tuned)[:1] == ["evaluate"] and "train_head" not in ran(tuned)
    assert load_config(project / "params.yaml").evaluate.calibration_bins == 10
    assert "Data and pipelines are up to date" in dvc(project, "status")


def dvc_repro_processes() -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        command = process.info["cmdline"] or []
        if "repro" in command and "--single-item" in command:
            found.append(process)
    return found


def test_a_transient_failure_is_retried(prefect_api, project):
    """Another DVC process holds the repo lock until the first try has failed on it; the flow's
    retry (after flow.retry_delay_s) then succeeds, and runs nothing: the pipeline is up to
    date."""
    lock = zc.lockfile.LockFile(str(project / ".dvc" / "tmp" / "lock"))
    command = [str(VENV_BIN / "thawline"), "flow", "run", "-p", str(project / "params.yaml")]
    flow_run = subprocess.Popen(command, env=prefect_api, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (first := dvc_repro_processes()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first, "the flow never started a stage"
        psutil.wait_procs(first, timeout=60)  # it gives up on the lock after 3 s
    finally:
        lock.close()
    out, err = flow_run.communicate(timeout=300)
    assert flow_run.returncode == 0, err[-4000:]
    assert ran(json.loads(out)) == []
    assert "Unable to acquire lock" in err and "Retry 1/2 will start" in err


def test_push_then_a_fresh_clone_pulls_and_recomputes_nothing(project, tmp_path):
    sh(project, "git", "add", "-A")
    sh(project, "git", "commit", "-qm", "pipeline")
    dvc(project, "push")
    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(project), str(clone))
    pulled = dvc(clone, "pull")
    assert (clone / "data" / "features" / "manifest.json").is_file(), pulled
    assert "Data and pipelines are up to date" in dvc(clone, "status")
    assert "Running stage" not in dvc(clone, "repro")


def test_dvc_exp_run_reruns_only_what_its_param_reaches(project):
    """Users' own DVC experiments on the same project (git commit from the test above): `make
    full`'s exact overrides, beside examples/text/'s project, whose outputs were never built."""
    out = dvc(project, "exp", "run", *makefile_overrides("FAST_PROFILE"))
    for stage in ("finetune", "evaluate", "register"):
        assert f"Running stage '{stage}'" in out, out
    for stage in ("prepare", "extract", "train_head"):
        assert f"Running stage '{stage}'" not in out, out
    record = json.loads((project / "models" / "finetune" / "record.json").read_text())
    assert record["strategy"] == "custom" and record["trained"]
    epochs = record["history"][1:]  # [0] is the starting model
    assert epochs and all("ema_val_accuracy" in row for row in epochs), record  # the EMA lever
    assert "accuracy" in dvc(project, "metrics", "show")
    assert "Data and pipelines are up to date" in dvc(project, "status")


def add_images(project: Path, fashion_mnist_arrays, count: int) -> None:
    images = fashion_mnist_arrays[0]
    root = load_config(project / "params.yaml").data.root
    for i in range(count):
        Image.fromarray(255 - images[150 + i]).save(root / "a" / f"new-{i}.png")


def test_retrain_does_nothing_without_change_then_extracts_only_new_images_and_escalates(
    prefect_api, project, fashion_mnist_arrays
):
    """Every head is below escalate_below 1.0, so auto escalates to fine-tuning (each policy,
    including "the head is enough": tests/unit/test_strategy.py)."""
    params = project / "params.yaml"
    raw = yaml.safe_load(params.read_text())
    raw["retrain"] = {"finetune": "auto", "escalate_below": 1.0}
    params.write_text(yaml.safe_dump(raw))
    idle = retrain(prefect_api, project)
    assert idle["action"] == "nothing" and "unchanged" in idle["reasons"][0]

    add_images(project, fashion_mnist_arrays, 6)
    result = retrain(prefect_api, project)
    assert result["images_computed"] == 6  # the other images' features came from the cache
    stages = ["prepare", "extract", "train_head", "finetune", "evaluate", "register"]
    assert ran(result["stages"]) == stages
    assert result["action"] == "finetune"
    assert "below retrain.escalate_below 1.0: fine-tune" in result["reasons"][-1]
    manifest = json.loads((project / load_config(params).paths.prepared / "manifest.json")
                          .read_text())  # fmt: skip
    assert sum(s["count"] for s in manifest["splits"].values()) == 156


def test_serve_registers_both_deployments_with_their_schedules(project, tmp_path):
    """``thawline flow serve`` against a real ``prefect server start`` on 127.0.0.1."""
    port = free_port()
    home = tmp_path / "prefect"
    api = f"http://127.0.0.1:{port}/api"
    env = server_env(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                     PREFECT_API_URL=api, COLUMNS="200")  # fmt: skip
    server = [str(VENV_BIN / "prefect"), "server", "start", "--port", str(port)]
    with background_server(server, f"{api}/health", tmp_path, env):
        serve = [str(VENV_BIN / "thawline"), "flow", "serve", "-p", str(project / "params.yaml")]
        # thawline turns Prefect's analytics off itself (a fresh home printed a telemetry trace)
        own = {k: v for k, v in env.items() if k != "PREFECT_SERVER_ANALYTICS_ENABLED"}
        with background_server(serve, f"{api}/health", tmp_path, own):
            listed, deadline = "", time.monotonic() + 120
            while "thawline-retrain" not in listed and time.monotonic() < deadline:
                time.sleep(2)
                listed = sh(tmp_path, str(VENV_BIN / "prefect"), "deployment", "ls", env=env)
            assert "thawline-training/thawline-training" in listed, listed
            shown = sh(tmp_path, str(VENV_BIN / "prefect"), "deployment", "inspect",
                       "thawline-training/thawline-training", env=env)  # fmt: skip
            cron = load_config(project / "params.yaml").flow.cron
            assert cron in shown, shown
            said = (tmp_path / "thawline-flow.log").read_text()
            assert f"thawline: serving thawline-training: cron '{cron}' (" in said, said
            assert "next run 20" in said and "Traceback" not in said, said


def started(command: list[str], cwd: Path, env: dict) -> subprocess.Popen:
    env = env | GIT_ENV | {"PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.Popen(command, cwd=cwd, env=env, text=True, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip


def set_param(project: Path, section: str, key: str, value) -> None:
    params = project / "params.yaml"
    raw = yaml.safe_load(params.read_text())
    raw[section][key] = value
    params.write_text(yaml.safe_dump(raw))


@pytest.mark.slow
def test_dvc_repro_and_a_flow_started_together_take_turns_or_fail_clearly(prefect_api, project):
    """RELIABILITY.md 24: the two writers as real processes, on a change that reruns four
    stages. One waits (the flow retries a locked repo) or fails saying the repo or the output
    is locked, and by whom; the pipeline ends consistent and whole."""
    set_param(project, "head", "epochs", 7)
    flow = [str(VENV_BIN / "thawline"), "flow", "run", "-p", str(project / "params.yaml")]
    runs = [started([sys.executable, "-m", "dvc", "repro"], project, os.environ),
            started(flow, project, prefect_api)]  # fmt: skip
    said = [run.communicate(timeout=900)[0] for run in runs]
    codes = [run.returncode for run in runs]
    assert 0 in codes, said
    locked = ("Unable to acquire lock", "is busy, it is being blocked by")  # DVC's two locks
    for code, text in zip(codes, said, strict=True):
        assert code == 0 or any(sign in text for sign in locked), text[-3000:]
    assert "Data and pipelines are up to date" in dvc(project, "status")
    assert "Running stage" not in dvc(project, "repro")  # dvc.lock matches what is on disk
    registration = json.loads((project / "reports" / "registration.json").read_text())
    assert registration["version"] >= 1


@pytest.mark.slow
def test_after_a_sigkill_mid_stage_dvc_repro_needs_no_clean_up(project):
    """RELIABILITY.md 30: ``dvc repro`` and its stage process SIGKILLed while the fine-tune
    writes checkpoints; the next ``dvc repro`` from a fresh process completes by itself (DVC's
    lock and thawline's output lock go with their owners, stale temp files are swept)."""
    set_param(project, "finetune", "base_lr", 0.0005)
    repro = started([sys.executable, "-m", "dvc", "repro"], project, os.environ)
    checkpoints = project / "models" / "checkpoints" / "finetune"
    deadline = time.monotonic() + 600
    while not list(checkpoints.glob("*/epoch-*")):
        assert repro.poll() is None and time.monotonic() < deadline, repro.stdout.read()[-3000:]
        time.sleep(0.05)
    os.killpg(repro.pid, 9)  # dvc, the stage command and anything it started
    repro.wait(timeout=30)
    out = dvc(project, "repro")  # no manual step between the two
    assert "Running stage 'finetune'" in out, out
    assert "Data and pipelines are up to date" in dvc(project, "status")
    leftovers = [p for p in project.rglob("*.tmp") if ".dvc" not in p.parts]
    assert leftovers == [] and not list(project.rglob(".*.lock"))
