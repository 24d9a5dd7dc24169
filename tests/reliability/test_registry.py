"""Registry and serving (RELIABILITY.md 16-18): the champion gate on the pinned test set, loud
dangling aliases, idempotent retries, parallel registrations from real processes against one
SQLite store, and 4xx answers from the served model to bad input."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from base64 import b64encode
from pathlib import Path

import mlflow.models
import pytest
from PIL import Image

from tests.conftest import small_config
from tests.registry_support import NAME, client, invoke, model_server, pipeline_config, post
from thawline.config import dump_config
from thawline.data.store import load_split, read_manifest
from thawline.files import read_json
from thawline.stages import extract, prepare, register
from thawline.stages.register import png_bytes
from thawline.tracking import RegistryError, load_model


@pytest.fixture
def pipeline(registry_pipeline):
    return registry_pipeline


@pytest.fixture
def scenario(registry_scenario):
    return registry_scenario


def test_champion_moves_only_through_the_gate(pipeline, scenario):
    records, accuracy = scenario
    assert accuracy["bad"] < accuracy["medium"] < 0.55 < 0.7 < accuracy["good"]
    first, worse, better = records["medium"], records["bad"], records["good"]
    assert [first["version"], worse["version"], better["version"]] == [1, 2, 3]
    assert first["decision"]["promote"] and "first model" in first["decision"]["reason"]
    assert first["aliases"] == {"champion": 1, "challenger": 1}
    assert not worse["decision"]["promote"] and worse["aliases"] == {"champion": 1, "challenger": 2}
    assert worse["decision"]["champion_version"] == 1 and worse["decision"]["difference"] < 0
    assert better["decision"]["promote"] and better["aliases"] == {"champion": 3, "challenger": 3}
    assert (
        better["decision"]["p_value"] < 0.05 and better["decision"]["b"] > better["decision"]["c"]
    )
    # The decision and its numbers are on the version, the class map on version and run.
    mv = client(pipeline.cfg).get_model_version(NAME, "2")
    assert mv.tags["thawline.gate.promote"] == "False"
    assert json.loads(mv.tags["thawline.gate"]) == worse["decision"]
    assert json.loads(mv.tags["thawline.classes"])[0] == "T-shirt/top"
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(pipeline.cfg.tracking.uri)  # models:/ URIs resolve in this store
    try:
        flavor = mlflow.models.get_model_info(f"models:/{NAME}/3").flavors["python_function"]
    finally:
        mlflow.set_tracking_uri(before)
    assert "model_code_path" in flavor and "python_model" not in flavor  # no pickle
    run = client(pipeline.cfg).get_run(mv.run_id)
    assert run.data.tags["thawline.stage"] == "register"
    assert "thawline.model.preprocess.mean" in run.data.tags
    assert "version" not in run.data.metrics and "promoted" not in run.data.metrics
    # The registry page says what the version is: metrics, the gate's numbers, provenance.
    described = client(pipeline.cfg).get_model_version(NAME, "3").description
    assert "| accuracy |" in described and "promoted to champion" in described
    assert "p_value:" in described and "data_fingerprint: `" in described
    assert "backbone: `timm:tf_efficientnet_lite0`" in described
    # The pipeline's parent run carries the headline: accuracy, the choice and the gate (the
    # three registrations share one config, so one parent: the last one's figures).
    parent = client(pipeline.cfg).get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.metrics["test_accuracy"] == pytest.approx(accuracy["good"])
    assert parent.data.tags["thawline.chosen_model"] == "head_only"
    assert parent.data.tags["thawline.registered_version"] == "3"
    assert parent.data.tags["thawline.champion_version"] == "3"
    assert parent.data.tags["thawline.gate"] == "promoted"


def test_retried_registration_reuses_its_version(pipeline, scenario):
    pipeline.use("good")
    again = read_json(register.run(pipeline.cfg, progress=False).outputs["registration"])
    assert again["version"] == 3 and again["reused"]
    assert again["decision"] == scenario[0]["good"]["decision"]
    versions = client(pipeline.cfg).search_model_versions(f"name = '{NAME}'")
    assert sorted(int(v.version) for v in versions) == [1, 2, 3]


def test_dangling_alias_fails_loudly(pipeline, tmp_path):
    cfg = pipeline_config(
        tmp_path, pipeline.cfg.paths.prepared, pipeline.cfg.paths.features,
        Path(pipeline.cfg.tracking.artifacts).parent, name="dangling",
    )  # fmt: skip
    pipeline.use("good", cfg)
    assert read_json(register.run(cfg, progress=False).outputs["registration"])["version"] == 1
    client(cfg).delete_model_version("dangling", "1")
    with pytest.raises(RegistryError, match="version 1, which has been deleted"):
        load_model("models:/dangling@champion", cfg.tracking.uri)
    pipeline.use("good_again", cfg)  # a new model: registered, but the gate refuses to guess
    with pytest.raises(RegistryError, match="never falls back"):
        register.run(cfg, progress=False)
    assert "champion" not in client(cfg).get_registered_model("dangling").aliases


def test_served_model_answers_and_refuses_bad_input_with_4xx(pipeline, scenario, tmp_path):
    test = load_split(pipeline.cfg.paths.prepared, "test")
    classes = read_manifest(pipeline.cfg.paths.prepared)["classes"]
    picks = list(range(0, 200, 20))
    images = [b64encode(png_bytes(test.images[i])).decode() for i in picks]
    uri = f"models:/{NAME}@champion"
    with model_server(uri, pipeline.cfg.tracking.uri, tmp_path) as base:
        status, body = invoke(base, images)
        assert status == 200, body
        labels = [row["label"] for row in body["predictions"]]
        right = sum(
            label == classes[test.labels[i]] for label, i in zip(labels, picks, strict=True)
        )
        first = body["predictions"][0]
        assert right >= 6 and len(first["probabilities"]) == 10
        # Class names come with the scores: the top 5, best first, led by the label.
        assert first["top_labels"][0] == first["label"] and set(first["top_labels"]) <= set(classes)
        assert len(first["top_probabilities"]) == 5 and first["top_probabilities"][0] == max(
            first["probabilities"])  # fmt: skip
        assert first["top_probabilities"] == sorted(first["top_probabilities"], reverse=True)
        status, body = invoke(base, [test.images[0].permute(1, 2, 0).tolist()])  # H x W x 3
        assert status == 200 and body["predictions"][0]["label"] in classes
        # The tensor-style form MLflow documents works too.
        status, body = post(base, {"inputs": {"image": images[:2]}})
        assert status == 200 and [p["label"] for p in body["predictions"]] == labels[:2], body
        blank = io.BytesIO()
        Image.new("L", (7000, 8000)).save(blank, format="PNG")  # small file, 56M pixels
        huge = b64encode(blank.getvalue()).decode()
        for bad, message in (
            ("bm90IGFuIGltYWdl", "cannot decode image (not a format PIL reads)"),  # "not an image"
            ([[[1, 2], [3, 4]]], "got shape (1, 2, 2)"),
            ([[0.5, 0.2], [0.1, 0.9]], "got dtype float64"),
            ("/etc/hostname", "reads no files"),
            (huge, "7000x8000 pixels exceeds the model's pixel limit=50,000,000"),
        ):
            status, body = invoke(base, [bad])
            assert 400 <= status < 500, (bad, status, body)
            said = body.get("message", "")
            assert message in said, (bad, body)
            # Never the request echoed back, nor Python object reprs, nor a training key.
            assert "Failed to predict data" not in said and " object at 0x" not in said, said
            assert "prepare." not in said and len(said) < 600, said


REGISTER_IN_PROCESS = """
import json, sys
from thawline.config import config_from_dict
from thawline.stages import register
register.run(config_from_dict(json.load(open(sys.argv[1]))), progress=False)
"""


def test_parallel_registrations_get_distinct_versions_and_one_gate_at_a_time(pipeline, tmp_path):
    store = Path(pipeline.cfg.tracking.artifacts).parent
    names = ("medium", "bad", "good")
    processes = []
    for name in names:
        cfg = pipeline_config(tmp_path / name, pipeline.cfg.paths.prepared,
                              pipeline.cfg.paths.features, store, name="parallel")  # fmt: skip
        pipeline.use(name, cfg)
        params = tmp_path / f"{name}.json"
        params.write_text(json.dumps(dump_config(cfg)))
        command = [sys.executable, "-c", REGISTER_IN_PROCESS, str(params)]
        processes.append(subprocess.Popen(command, stderr=subprocess.PIPE, cwd=tmp_path))
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err.decode()[-3000:]
    records = {n: read_json(tmp_path / n / "registration.json") for n in names}
    assert sorted(r["version"] for r in records.values()) == [1, 2, 3]
    # Gates ran one at a time, so every decision saw the champion before it, and the good
    # model (which beats both others) ends as champion whatever the order was.
    model = client(pipeline.cfg).get_registered_model("parallel")
    good = records["good"]["version"]
    assert model.aliases["champion"] == good
    assert model.tags["thawline.champion_version"] == str(good)
    decisions = {name: record["decision"] for name, record in records.items()}
    assert decisions["good"]["promote"]
    # Exactly one registration found no champion (and was promoted); the bad model won only then.
    first = [name for name, d in decisions.items() if d["champion_version"] is None]
    assert len(first) == 1 and decisions[first[0]]["promote"]
    assert decisions["bad"]["promote"] == (first == ["bad"])


def test_after_new_images_the_gate_scores_the_champion_on_the_new_split(pipeline, tmp_path):
    """Adding images changes the test split's fingerprint; the gate used to say "not compared"
    forever, so a data-change retrain could never promote. It now scores the champion itself on
    the challenger's images (splits are carved by content, so they were never its training)."""
    store = tmp_path / "store"
    first = pipeline_config(tmp_path / "one", pipeline.cfg.paths.prepared,
                            pipeline.cfg.paths.features, store)  # fmt: skip
    pipeline.use("medium", first)
    assert register.run(first, progress=False).info["decision"]["promote"]  # version 1
    grown = small_config(tmp_path / "grown", prepare={"limit_per_class": 30})  # 20 -> 30 a class
    prepare.run(grown, progress=False)
    old, new = (read_manifest(c.paths.prepared)["splits"] for c in (pipeline.cfg, grown))
    assert old["test"]["fingerprint"] != new["test"]["fingerprint"]
    second = pipeline_config(tmp_path / "two", grown.paths.prepared, tmp_path / "features", store)
    extract.run(second, progress=False)
    pipeline.use("good", second)
    record = register.run(second, progress=False).info
    decision = record["decision"]
    assert decision["champion_rescored"] and decision["champion_version"] == 1
    assert decision["b"] > decision["c"] and decision["p_value"] < 0.05, decision
    assert decision["promote"] and record["aliases"]["champion"] == 2
