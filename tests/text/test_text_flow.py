"""The training and retrain flows on a text source, as a user runs them: a git + DVC project with
the text project's dvc.yaml, 40 BBC articles in a text folder, a real Prefect server. New documents
mean that only those are embedded."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from tests.conftest import REPO
from tests.integration.test_flows import dvc, prefect_api, ran, retrain, sh, training  # noqa: F401
from tests.text.conftest import bbc_folder
from thawline.data.text_sources import bbc_news_folder
from thawline.stage_table import NAMES as STAGES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def text_project(tmp_path_factory):
    base = tmp_path_factory.mktemp("textflow")
    repo = base / "project"
    (repo / "examples" / "text").mkdir(parents=True)
    shutil.copytree(REPO / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__"))
    project = repo / "examples" / "text"
    shutil.copy(REPO / "examples" / "text" / "dvc.yaml", project / "dvc.yaml")
    params = yaml.safe_load((REPO / "examples" / "text" / "params.yaml").read_text())
    params["data"] |= {"source": "textfolder", "root": str(bbc_folder(base / "docs"))}
    params["prepare"] |= {"max_length": 64, "val_fraction": 0.2}
    params["finetune"] |= {"phase_images": 16, "strategy": "custom",
                           "phases": [{"groups": 1, "epochs": 1, "lr": 1e-4}]}  # fmt: skip
    params["scratch"]["enabled"] = False
    params["tracking"]["uri"] = f"sqlite:///{repo / 'mlflow.db'}"
    params["flow"] |= {"retries": 1, "retry_delay_s": 1}
    params["retrain"] = {"finetune": "never", "escalate_below": 0.85}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    (repo / ".gitignore").write_text("/mlflow.db\n/mlruns/\n")
    sh(repo, "git", "init", "-q")
    dvc(repo, "init", "-q")
    dvc(repo, "config", "core.analytics", "false")
    return project


def test_the_flows_run_a_text_project_and_embed_only_new_documents(prefect_api, text_project):  # noqa: F811
    first = training(prefect_api, text_project)
    assert ran(first) == list(STAGES)
    assert "Data and pipelines are up to date" in dvc(text_project, "status")
    registration = json.loads((text_project / "reports" / "registration.json").read_text())
    assert registration["version"] == 1
    docs = yaml.safe_load((text_project / "params.yaml").read_text())["data"]["root"]
    for i, path in enumerate(sorted((bbc_news_folder() / "tech").glob("*.txt"))[-3:]):
        shutil.copyfile(path, f"{docs}/tech/new-{i}.txt")
    result = retrain(prefect_api, text_project)
    assert result["images_computed"] == 3  # the other documents' features came from the cache
    assert ran(result["stages"])[:3] == ["prepare", "extract", "train_head"]
