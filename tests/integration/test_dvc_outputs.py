"""Every DVC output is a function of its inputs: a killed and resumed extraction, and a repeated
``train_head``, produce the same bytes, so DVC sees no change and reruns nothing downstream.

A real DVC project in tmp_path (this repo's dvc.yaml, src/ and params.yaml; ~100 images), the
pipeline run once with ``dvc repro`` up to ``train_head`` (the stages after it only read what
these tests show unchanged, and would add a minute of start-ups); then the features are deleted
and extracted again by a process that SIGKILLs itself in the middle of its third shard write,
and ``dvc repro`` resumes it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO
from tests.integration.test_flows import dvc, sh
from tests.reliability.test_interrupted import KILLED_MID_WRITE

TARGET = "train_head"  # the pipeline as far as these tests need it


def lock_outs(repo, stage: str) -> dict:
    """md5 of each output of ``stage`` as dvc.lock records it."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"][stage]
    return {out["path"]: out["md5"] for out in lock["outs"]}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    repo = tmp_path_factory.mktemp("outputs") / "project"
    repo.mkdir()
    shutil.copy(REPO / "dvc.yaml", repo / "dvc.yaml")
    shutil.copytree(REPO / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["prepare"]["limit_per_class"] = 10
    params["extract"] |= {"image_size": 32, "batch_size": 16, "shard_size": 16}
    params["head"]["epochs"] = 3
    params["finetune"] |= {"image_size": 32, "epochs_per_phase": 1}
    params["scratch"]["enabled"] = False
    params["tracking"] |= {"uri": f"sqlite:///{repo / 'mlflow.db'}", "artifacts": "mlruns"}
    params["registry"]["onnx"] = False  # ~10 s; test_export.py tests it
    params["evaluate"]["cams"] = False  # test_evaluate.py tests them
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    (repo / ".gitignore").write_text("/mlflow.db\n/mlruns/\n/models/checkpoints/\n/reports/\n")
    sh(repo, "git", "init", "-q")
    dvc(repo, "init", "-q")
    dvc(repo, "config", "core.analytics", "false")
    dvc(repo, "repro", TARGET)
    return repo


def test_a_killed_then_resumed_extraction_changes_nothing_dvc_can_see(project):
    before = lock_outs(project, "extract")
    features = project / "data" / "features"
    for path in features.iterdir():
        path.unlink()
    params = project / "params.yaml"
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(params)], cwd=project)
    assert killed.returncode == -9 and len(list(features.glob("*.safetensors"))) == 2
    assert not (features / "manifest.json").exists()
    out = dvc(project, "repro", TARGET)
    assert "Running stage 'extract'" in out
    assert f"Running stage '{TARGET}'" not in out, out  # nothing downstream saw a change
    assert lock_outs(project, "extract") == before  # same directory hash: same bytes
    assert "Data and pipelines are up to date" in dvc(project, "status", TARGET)


def test_a_repeated_train_head_changes_nothing_dvc_can_see(project):
    before = lock_outs(project, "train_head")
    forced = dvc(project, "repro", "--force", "--single-item", "train_head")
    assert "Running stage 'train_head'" in forced
    assert lock_outs(project, "train_head") == before  # no wall time in head.json any more
    assert "Data and pipelines are up to date" in dvc(project, "status", TARGET)
    assert "Running stage" not in dvc(project, "repro", TARGET)
