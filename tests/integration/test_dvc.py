"""``dvc repro`` and ``dvc exp run`` in a real DVC repo: the whole pipeline runs in order, a
second repro does nothing, and a changed param reruns only the stages that read it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO

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


def test_dvc_repro_runs_once_and_reruns_only_what_changed(tmp_path):
    repo = tmp_path / "project"
    repo.mkdir()
    shutil.copy(REPO / "dvc.yaml", repo / "dvc.yaml")
    shutil.copytree(REPO / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["prepare"]["limit_per_class"] = 10
    params["extract"]["image_size"] = 32
    params["head"]["epochs"] = 3
    params["tracking"]["uri"] = f"sqlite:///{repo / 'mlflow.db'}"
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc(repo, "init", "-q")
    dvc(repo, "config", "core.analytics", "false")

    first = dvc(repo, "repro")
    for stage in ("prepare", "extract", "train_head", "evaluate", "register"):
        assert f"Running stage '{stage}'" in first
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

    params["extract"]["crop_pct"] = 1.0
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    third = dvc(repo, "repro")
    assert "Running stage 'extract'" in third
    assert "Running stage 'prepare'" not in third
