"""``dvc repro`` and ``dvc exp run`` in a real DVC repo: the whole pipeline runs in order, a
second repro does nothing, and a changed param reruns only the stages that read it.

Slow (about 3.5 minutes): the fast suite covers the same ground on test_flows' project, where
every stage runs through ``dvc repro --single-item``, ``dvc repro`` and ``dvc status`` find
nothing to do afterwards, and ``dvc exp run -S`` reruns only what its param reaches.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

pytestmark = pytest.mark.slow

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@localhost",
    "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@localhost",
}  # fmt: skip


def dvc(repo: Path, *args: str) -> str:
    env = os.environ | GIT_ENV | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def tiny_project(repo: Path, change) -> dict:
    """A git + DVC project at ``repo``: dvc.yaml, the source and a params.yaml for 10 images per
    class at 32 px, with ``change(params)`` applied; returns the params."""
    repo.mkdir()
    shutil.copy(REPO / "dvc.yaml", repo / "dvc.yaml")
    shutil.copytree(REPO / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["prepare"]["limit_per_class"] = 10
    params["extract"]["image_size"] = 32
    params["head"]["epochs"] = 3
    change(params)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc(repo, "init", "-q")
    dvc(repo, "config", "core.analytics", "false")
    return params


def test_dvc_repro_runs_once_and_reruns_only_what_changed(tmp_path):
    repo = tmp_path / "project"

    def change(params):
        params["finetune"] |= {"image_size": 32, "epochs_per_phase": 1}
        params["tracking"]["uri"] = f"sqlite:///{repo / 'mlflow.db'}"

    params = tiny_project(repo, change)

    first = dvc(repo, "repro")
    for stage in (
        "prepare",
        "extract",
        "train_head",
        "finetune",
        "scratch",
        "evaluate",
        "register",
    ):
        assert f"Running stage '{stage}'" in first
    # ~100 training images: auto keeps the head; the scratch baseline is off by default
    record = yaml.safe_load((repo / "models" / "finetune" / "record.json").read_text())
    assert record["strategy"] == "head_only" and not record["trained"]
    assert not (repo / "models" / "scratch" / "model" / "model.safetensors").exists()
    compared = sorted(p.name for p in (repo / "reports" / "evaluation" / "compare").iterdir())
    assert compared == ["head_only"]
    assert (repo / "reports" / "registration.json").is_file()
    assert "accuracy" in dvc(repo, "metrics", "show")
    assert "up to date" in dvc(repo, "repro")
    assert "up to date" in dvc(repo, "status")

    # A head param reruns train_head onward, never extract, as a DVC experiment.
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True, env=os.environ | GIT_ENV)
    subprocess.run(["git", "commit", "-qm", "base"], cwd=repo, check=True, env=os.environ | GIT_ENV)
    experiment = dvc(repo, "exp", "run", "-S", "head.lr=0.003")
    assert "Running stage 'train_head'" in experiment
    assert "Running stage 'extract'" not in experiment
    assert "Running stage 'prepare'" not in experiment

    # `make scratch`: the baseline as its own experiment; nothing before it runs again.
    baseline = dvc(repo, "exp", "run", "-S", "scratch.enabled=true")
    for stage in ("scratch", "evaluate", "register"):
        assert f"Running stage '{stage}'" in baseline
    for stage in ("prepare", "extract", "train_head", "finetune"):
        assert f"Running stage '{stage}'" not in baseline
    assert (repo / "models" / "scratch" / "model" / "model.safetensors").is_file()
    compared = sorted(p.name for p in (repo / "reports" / "evaluation" / "compare").iterdir())
    assert compared == ["head_only", "scratch"]

    # A finetune param reruns finetune onward (and scratch, whose budget follows it), not the head.
    tuned = dvc(repo, "exp", "run", "-S", "finetune.strategy=full")
    for stage in ("finetune", "scratch", "evaluate", "register"):
        assert f"Running stage '{stage}'" in tuned
    assert "Running stage 'train_head'" not in tuned
    record = yaml.safe_load((repo / "models" / "finetune" / "record.json").read_text())
    assert record["strategy"] == "full" and record["trained"]

    params["extract"]["crop_pct"] = 1.0
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    third = dvc(repo, "repro")
    assert "Running stage 'extract'" in third
    assert "Running stage 'prepare'" not in third


def test_experiments_in_temp_copies_land_in_the_project_store(tmp_path):
    """``dvc exp run --temp`` and a queued sweep run in throw-away copies under .dvc/tmp/exps;
    with the default relative store their runs and versions used to vanish with the copy."""
    from mlflow import MlflowClient

    repo = tmp_path / "project"
    params = tiny_project(repo, lambda p: p["scratch"].update(enabled=False))
    assert params["tracking"]["uri"] is None  # the default: sqlite:///mlflow.db in the project
    (repo / ".gitignore").write_text("mlflow.db*\nmlruns/\n")
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # the project's default store decides
    dvc(repo, "repro")
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True, env=os.environ | GIT_ENV)
    subprocess.run(["git", "commit", "-qm", "base"], cwd=repo, check=True, env=os.environ | GIT_ENV)

    dvc(repo, "exp", "run", "--temp", "-n", "solo", "-S", "head.lr=0.003")
    for lr in ("0.002", "0.004"):
        dvc(repo, "exp", "run", "--queue", "-S", f"head.lr={lr}")
    dvc(repo, "exp", "run", "--run-all")

    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("thawline")
    heads = client.search_runs([experiment.experiment_id], "tags.`thawline.stage` = 'train_head'")
    assert sorted(r.data.params["head.lr"] for r in heads) == ["0.001", "0.002", "0.003", "0.004"]
    versions = client.search_model_versions("name = 'thawline'")
    named = {v.tags.get("thawline.experiment") for v in versions}
    assert "solo" in named and len(named - {None}) == 3  # the sweep's two have DVC's names
    # Only the workspace's `dvc repro` moved the aliases; experiments only recorded a verdict.
    model = client.get_registered_model("thawline")
    first = min(int(v.version) for v in versions)
    assert {k: int(v) for k, v in model.aliases.items()} == {"champion": first, "challenger": first}
    assert all("thawline.experiment_gate" in v.tags for v in versions if int(v.version) != first)
    assert not list((repo / ".dvc" / "tmp" / "exps").rglob("mlflow.db"))
