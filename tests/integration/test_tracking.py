"""MLflow tracking: one run per stage under one parent, params/metrics/tags/artifacts, FAILED on
error, a no-op when disabled, and the same code against a real ``mlflow server`` on loopback."""

from __future__ import annotations

import json
import subprocess

import pytest
from mlflow import MlflowClient

from tests.conftest import small_config
from tests.servers import VENV_BIN, background_server, free_port, server_env
from thawline.stage_table import StageResult
from thawline.tracking import pipeline_run, stage_run
from thawline.tracking.runs import PARENT_ENV


@pytest.fixture
def cfg(prepared_small, tmp_path):
    store = tmp_path / "store"
    return small_config(
        tmp_path,
        paths={"prepared": str(prepared_small.paths.prepared)},
        tracking={"uri": f"sqlite:///{store / 'mlflow.db'}", "artifacts": str(store / "mlruns")},
        head={"lr": 0.003},
    )


def runs_by_name(cfg) -> dict:
    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    return {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}


def outputs(folder):
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"accuracy": 0.9}))
    (folder / "plots").mkdir()
    (folder / "plots" / "calibration.csv").write_text("bin,count\n0,3\n")
    (folder / "predictions.safetensors").write_bytes(b"tensors stay out of MLflow")
    (folder / ".hidden.json").write_text("{}")
    return folder


def test_stage_runs_log_everything_under_one_parent(cfg, tmp_path):
    with stage_run(cfg, "train_head") as tracker:
        for epoch in (1, 2, 3):
            tracker.log_epoch(epoch, {"train_loss": 1.0 / epoch, "val_accuracy": 0.5 + epoch / 10})
        result = StageResult({"evaluation": outputs(tmp_path / "out")}, {"val_accuracy": 0.8})
        tracker.log_result(result)
        tracker.log_candidate({"lr": 0.01, "type": "mlp"}, {"val_accuracy": 0.7}, [{"epoch": 1}])
        head_run = tracker.run_id
    with stage_run(cfg, "evaluate") as tracker:
        tracker.set_tags({"custom": "yes"})
    runs = runs_by_name(cfg)
    train, evaluate = runs["train_head"], runs["evaluate"]
    parent = next(r for r in runs.values() if r.data.tags.get("thawline.role") == "pipeline")
    assert train.info.run_id == head_run and train.info.status == "FINISHED"
    assert train.data.tags["mlflow.parentRunId"] == evaluate.data.tags["mlflow.parentRunId"]
    assert train.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert parent.info.status == "FINISHED" and parent.data.params["head.lr"] == "0.003"
    # The whole config on the parent; a stage run gets the params its stage reads from the CLI
    # (test_stage_params_are_the_ones_it_reads).
    assert train.data.params == {}
    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # not GenAI
    history = client.get_metric_history(train.info.run_id, "train_loss")
    assert [(m.step, round(m.value, 3)) for m in history] == [(1, 1.0), (2, 0.5), (3, 0.333)]
    # The final value never lands at step 0 of the epoch curve (a fake dip in the chart).
    curve = client.get_metric_history(train.info.run_id, "val_accuracy")
    assert [m.step for m in curve] == [1, 2, 3]
    assert train.data.metrics["final_val_accuracy"] == 0.8
    tags = train.data.tags
    assert tags["thawline.stage"] == "train_head"
    assert tags["thawline.backbone"] == "timm:tf_efficientnet_lite0"
    assert (
        tags["thawline.data_fingerprint"]
        == json.loads((cfg.paths.prepared / "manifest.json").read_text())["fingerprint"]
    )
    assert "thawline.feature_fingerprint" not in tags  # no features extracted here
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    if commit.returncode == 0:
        assert tags["thawline.git_commit"] == commit.stdout.strip()
    assert evaluate.data.tags["custom"] == "yes"
    # Small readable outputs are artifacts; tensors and hidden files are not.
    logged = {a.path for a in client.list_artifacts(train.info.run_id, "evaluation")}
    assert logged == {"evaluation/metrics.json", "evaluation/plots"}
    nested = client.list_artifacts(train.info.run_id, "evaluation/plots")
    assert [a.path for a in nested] == ["evaluation/plots/calibration.csv"]
    candidate = next(r for r in runs.values() if r.data.tags.get("thawline.role") == "candidate")
    assert candidate.data.tags["mlflow.parentRunId"] == head_run
    assert candidate.data.params == {"lr": "0.01", "type": "mlp"}
    # Artifacts of a local store live under tracking.artifacts.
    assert train.info.artifact_uri.startswith(cfg.tracking.artifacts.as_uri())
    assert (
        cfg.tracking.artifacts / head_run / "artifacts" / "evaluation" / "metrics.json"
    ).is_file()


def test_an_exception_marks_the_run_failed_and_propagates(cfg):
    with pytest.raises(ValueError, match="loss is NaN"), stage_run(cfg, "train_head"):
        raise ValueError("loss is NaN")
    runs = runs_by_name(cfg)
    failed = runs["train_head"]
    assert failed.info.status == "FAILED"
    assert failed.data.tags["thawline.error"] == "ValueError: loss is NaN"
    parent = runs[f"pipeline {failed.data.tags['thawline.pipeline_key'][:8]}"]
    assert parent.info.status == "FAILED"


def test_reentering_the_active_stage_reuses_its_run(cfg):
    with stage_run(cfg, "register") as outer, stage_run(cfg, "register") as inner:
        assert inner.run_id == outer.run_id
    assert len(runs_by_name(cfg)) == 2  # the stage and its parent


def test_other_params_start_another_parent(cfg, tmp_path):
    other = small_config(tmp_path, tracking=cfg.tracking.model_dump(), head={"lr": 0.01})
    with stage_run(cfg, "train_head"):
        pass
    with stage_run(other, "train_head"):
        pass
    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    runs = client.search_runs([client.get_experiment_by_name("thawline").experiment_id])
    parents = {
        r.data.tags["mlflow.parentRunId"] for r in runs if "mlflow.parentRunId" in r.data.tags
    }
    assert len(parents) == 2


def test_pipeline_run_sets_the_parent_for_its_stages(cfg, monkeypatch):
    monkeypatch.delenv(PARENT_ENV, raising=False)
    with pipeline_run(cfg, "nightly") as parent_id:
        with stage_run(cfg, "extract"):
            pass
        with stage_run(cfg, "train_head"):
            pass
    runs = runs_by_name(cfg)
    assert runs["nightly"].info.run_id == parent_id and runs["nightly"].info.status == "FINISHED"
    assert runs["extract"].data.tags["mlflow.parentRunId"] == parent_id
    assert runs["train_head"].data.tags["mlflow.parentRunId"] == parent_id
    assert len(runs) == 3
    # A stage run outside the block starts (or joins) the keyed parent, not the flow's.
    with stage_run(cfg, "evaluate") as tracker:
        evaluate = tracker.run_id
    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    assert client.get_run(evaluate).data.tags["mlflow.parentRunId"] != parent_id


def test_disabled_tracking_touches_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = small_config(tmp_path, tracking={"enabled": False})
    with stage_run(cfg, "train_head") as tracker:
        tracker.log_epoch(1, {"loss": 1.0})
        tracker.log_result(StageResult({"x": tmp_path}, {"accuracy": 1.0}))
        assert tracker.run_id is None
    with pytest.raises(RuntimeError), stage_run(cfg, "train_head"):
        raise RuntimeError("still raised")
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


def test_a_real_tracking_server_via_mlflow_tracking_uri(prepared_small, tmp_path, monkeypatch):
    port = free_port()
    command = [str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
               "--default-artifact-root", str(tmp_path / "artifacts"),
               "--artifacts-destination", str(tmp_path / "artifacts")]  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    with background_server(command, f"{base}/health", tmp_path, server_env()):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", base)
        cfg = small_config(tmp_path, paths={"prepared": str(prepared_small.paths.prepared)})
        assert cfg.tracking.uri is None  # the environment decides
        with stage_run(cfg, "evaluate") as tracker:
            tracker.log_epoch(1, {"val_accuracy": 0.75})
            tracker.log_result(StageResult({"evaluation": outputs(tmp_path / "out")}, {"a": 1}))
            run_id = tracker.run_id
        client = MlflowClient(tracking_uri=base)
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.metrics == {"val_accuracy": 0.75, "a": 1}
        parent = client.get_run(run.data.tags["mlflow.parentRunId"])
        assert parent.data.tags["thawline.role"] == "pipeline"
        assert parent.data.params["head.lr"] == "0.001"
        assert "evaluation/metrics.json" in {
            a.path for a in client.list_artifacts(run_id, "evaluation")
        }
    assert not (tmp_path / "mlflow.db").exists()  # nothing went to the default local store


def test_stage_params_are_the_ones_it_reads(cfg, tmp_path):
    from thawline.stage_runner import run_stage

    store = tmp_path / "store"
    tried = small_config(
        tmp_path / "own",
        tracking={"uri": f"sqlite:///{store / 'mlflow.db'}", "artifacts": str(store / "mlruns")},
    )
    run_stage(tried, "prepare", progress=False)
    params = runs_by_name(cfg)["prepare"].data.params
    assert params["prepare.val_fraction"] == str(cfg.prepare.val_fraction)
    assert {key.split(".")[0] for key in params} <= {"data", "prepare", "paths", "seed"}
    assert "head.lr" not in params and len(params) < 30  # it was the whole config: 97
