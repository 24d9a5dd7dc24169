"""``dvc repro`` in a real DVC repo: stages run in order, a second repro does nothing, and a
change to ``extract.*`` reruns only ``extract``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO


def dvc(repo: Path, *args: str) -> str:
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
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
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc(repo, "init", "-q")
    dvc(repo, "config", "core.analytics", "false")

    first = dvc(repo, "repro")
    assert "Running stage 'prepare'" in first and "Running stage 'extract'" in first
    assert (repo / "data" / "features" / "manifest.json").is_file()
    assert "up to date" in dvc(repo, "repro")
    assert "up to date" in dvc(repo, "status")

    params["extract"]["crop_pct"] = 1.0
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    third = dvc(repo, "repro")
    assert "Running stage 'extract'" in third
    assert "Running stage 'prepare'" not in third
