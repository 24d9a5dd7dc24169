"""``register``: the complete model, the champion gate, idempotent retries, loud dangling
aliases, ``predict_paths`` and ``mlflow models serve``, against a real SQLite store in tmp_path.

Heads are fitted here on the cached features (a few AdamW steps), and the evaluation files are
written as the evaluate stage writes them, so these tests depend only on prepare and extract.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

import mlflow.models
import pytest
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from torch.nn import functional as F

from tests.conftest import small_config
from tests.integration.servers import VENV_BIN, background_server, free_port, server_env
from thawline.config import dump_config
from thawline.data.images import BadImageError
from thawline.data.store import load_split, read_manifest
from thawline.evaluation.predictions import PREDICTIONS, save_predictions
from thawline.features.cache import load_features, read_cache_manifest
from thawline.files import read_json, write_json
from thawline.models.head import Head, save_head
from thawline.predict import main_predict, predict_paths
from thawline.stages import extract, register
from thawline.stages.register import png_bytes
from thawline.tracking import RegistryError, load_model

NAME = "fmnist"


@pytest.fixture(scope="module", autouse=True)
def no_pickle():
    """Every model load here (and in servers started here) must work without unpickling."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
        yield


def fit(features: torch.Tensor, labels: torch.Tensor, classes: int, epochs: int) -> Head:
    """A linear head, full-batch AdamW; ``epochs=0`` leaves it at its random init."""
    torch.manual_seed(0)
    head = Head(features.shape[1], classes)
    head.set_standardisation(features)
    opt = torch.optim.AdamW(head.parameters(), lr=0.01, weight_decay=1e-4)
    for _ in range(epochs):
        opt.zero_grad()
        F.cross_entropy(head(features), labels).backward()
        opt.step()
    return head.eval()


class Pipeline:
    """One pipeline's paths in tmp; ``use(name)`` puts a head and its evaluation in place."""

    def __init__(self, cfg, heads):
        self.cfg = cfg
        self.heads = heads

    def use(self, name: str, cfg=None):
        cfg = cfg or self.cfg
        head = self.heads[name]
        save_head(head, cfg.paths.head, {"feature_fingerprint": self.fingerprint})
        features, labels = load_features(cfg.paths.features, "test")
        with torch.no_grad():
            probs = torch.softmax(head(features), dim=1)
        pred = probs.argmax(dim=1)
        split = read_manifest(cfg.paths.prepared)["splits"]["test"]
        meta = {"split": "test", "split_fingerprint": split["fingerprint"], "model": "head_only"}
        save_predictions(cfg.paths.evaluation / PREDICTIONS, labels, pred, probs, meta)
        accuracy = (pred == labels).float().mean().item()
        write_json(cfg.paths.evaluation / "metrics.json", {"accuracy": accuracy})
        return accuracy

    @property
    def fingerprint(self) -> str:
        return read_cache_manifest(self.cfg.paths.features)["fingerprint"]


def pipeline_config(base: Path, prepared: Path, features: Path, store: Path, name: str = NAME):
    return small_config(
        base,
        paths={
            "prepared": str(prepared),
            "features": str(features),
            "head": str(base / "head"),
            "model": str(base / "model"),
            "evaluation": str(base / "evaluation"),
            "registration": str(base / "registration.json"),
        },
        tracking={"uri": f"sqlite:///{store / 'mlflow.db'}", "artifacts": str(store / "mlruns")},
        registry={"model_name": name},
        # 64 px and hooked layers: about 0.8 test accuracy, and the model must rebuild the hooks
        extract={"image_size": 64, "layers": "auto"},
    )


@pytest.fixture(scope="module")
def pipeline(prepared_small, tmp_path_factory) -> Pipeline:
    tmp = tmp_path_factory.mktemp("register")
    cfg = pipeline_config(tmp, prepared_small.paths.prepared, tmp / "features", tmp)
    extract.run(cfg, progress=False)
    x, y = load_features(cfg.paths.features, "train")
    half = y < 5  # a head that never saw classes 5-9 tops out near 50%
    heads = {
        "medium": fit(x[half], y[half], 10, epochs=60),
        "bad": fit(x, y, 10, epochs=0),
        "good": fit(x, y, 10, epochs=60),
        "good_again": fit(x, y, 10, epochs=59),  # another good model (other weights)
    }
    return Pipeline(cfg, heads)


@pytest.fixture(scope="module")
def scenario(pipeline):
    """Three pipeline runs: medium (first: champion), bad (challenger), good (moves champion)."""
    records, accuracies = {}, {}
    for name in ("medium", "bad", "good"):
        accuracies[name] = pipeline.use(name)
        result = register.run(pipeline.cfg, progress=False)
        records[name] = read_json(result.outputs["registration"])
    return records, accuracies


def client(cfg) -> MlflowClient:
    return MlflowClient(tracking_uri=cfg.tracking.uri)


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
    flavor = mlflow.models.get_model_info(f"models:/{NAME}/3").flavors["python_function"]
    assert "model_code_path" in flavor and "python_model" not in flavor  # no pickle
    run = client(pipeline.cfg).get_run(mv.run_id)
    assert run.data.tags["thawline.stage"] == "register"
    assert "thawline.model.preprocess.mean" in run.data.tags


def test_retried_registration_reuses_its_version(pipeline, scenario):
    pipeline.use("good")
    again = read_json(register.run(pipeline.cfg, progress=False).outputs["registration"])
    assert again["version"] == 3 and again["reused"]
    assert again["decision"] == scenario[0]["good"]["decision"]
    versions = client(pipeline.cfg).search_model_versions(f"name = '{NAME}'")
    assert sorted(int(v.version) for v in versions) == [1, 2, 3]


def test_saved_model_reproduces_the_head_on_cached_features(pipeline, scenario):
    cfg = pipeline.cfg
    pipeline.use("good")
    register.run(cfg, progress=False)  # saves paths.model (a reused version)
    test = load_split(cfg.paths.prepared, "test")
    arrays = [image.permute(1, 2, 0).numpy() for image in test.images[:100]]
    from_images = load_model(str(cfg.paths.model)).predict(arrays)["probabilities"]
    features, _ = load_features(cfg.paths.features, "test")
    with torch.inference_mode():
        from_cache = pipeline.heads["good"](features[:100]).argmax(dim=1)
    agree = torch.tensor([int(torch.tensor(p).argmax()) for p in from_images]) == from_cache
    # The cache holds fp16 features computed by a bf16 backbone; the model runs in fp32.
    assert agree.float().mean() >= 0.85


def test_predict_paths_reads_files_and_folders(pipeline, scenario, tmp_path, capsys):
    test = load_split(pipeline.cfg.paths.prepared, "test")
    classes = read_manifest(pipeline.cfg.paths.prepared)["classes"]
    folder = tmp_path / "images"
    (folder / "nested").mkdir(parents=True)
    (folder / ".hidden").mkdir()
    picks = range(0, 200, 10)  # two images of each class
    for i in picks:
        (folder / "nested" / f"{i:03d}.png").write_bytes(png_bytes(test.images[i]))
    (folder / ".hidden" / "skip.png").write_bytes(png_bytes(test.images[0]))
    (folder / "notes.txt").write_text("not an image")
    rows = predict_paths(f"models:/{NAME}@champion", [folder], top_k=3,
                         tracking_uri=pipeline.cfg.tracking.uri)  # fmt: skip
    assert len(rows) == 20 and all(len(row["top"]) == 3 for row in rows)
    right = sum(row["label"] == classes[test.labels[i]] for row, i in zip(rows, picks, strict=True))
    assert right >= 13  # the good head is about 0.8 accurate
    assert rows[0]["top"][0][1] >= rows[0]["top"][1][1] >= rows[0]["top"][2][1]
    args = type("Args", (), {})()
    args.model, args.paths, args.top_k = f"models:/{NAME}@champion", [folder], 2
    args.csv, args.tracking_uri = tmp_path / "out.csv", pipeline.cfg.tracking.uri
    assert main_predict(args) == 0
    assert "000.png" in capsys.readouterr().out
    lines = (tmp_path / "out.csv").read_text().splitlines()
    assert lines[0] == "path,rank,label,probability" and len(lines) == 1 + 20 * 2


def test_predict_errors_name_the_problem(pipeline, scenario, tmp_path):
    with pytest.raises(BadImageError, match="no such file or folder"):
        predict_paths(str(pipeline.cfg.paths.model), [tmp_path / "missing.png"])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG truncated")
    with pytest.raises(MlflowException, match="broken.png: cannot decode image"):
        predict_paths(str(pipeline.cfg.paths.model), [broken])
    nowhere = f"sqlite:///{tmp_path / 'none.db'}"
    with pytest.raises(RegistryError, match="no MLflow store"):
        predict_paths(f"models:/{NAME}@champion", [broken], tracking_uri=nowhere)
    assert not (tmp_path / "none.db").exists()
    with pytest.raises(RegistryError, match="no registered model 'nope' with an alias"):
        load_model("models:/nope@champion", pipeline.cfg.tracking.uri)


def test_without_tracking_the_model_is_saved_but_not_registered(pipeline, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = pipeline_config(tmp_path, pipeline.cfg.paths.prepared, pipeline.cfg.paths.features,
                          tmp_path / "unused")  # fmt: skip
    cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"enabled": False})})
    pipeline.use("good", cfg)
    result = register.run(cfg, progress=False)
    assert read_json(cfg.paths.registration)["registered"] is False
    assert result.metrics == {"version": 0.0, "promoted": 0.0}
    assert (cfg.paths.model / "model.safetensors").is_file()
    assert not (tmp_path / "unused").exists() and not (tmp_path / "mlflow.db").exists()


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


@contextlib.contextmanager
def model_server(model_uri: str, tracking_uri: str, folder: Path):
    """``mlflow models serve`` on a free loopback port; yields its base URL."""
    port = free_port()
    command = [str(VENV_BIN / "mlflow"), "models", "serve", "-m", model_uri,
               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    env = server_env(MLFLOW_TRACKING_URI=tracking_uri)
    with background_server(command, f"{base}/ping", folder, env):
        yield base


def invoke(base: str, images: list) -> tuple[int, dict]:
    """POST images as MLflow's ``dataframe_split`` JSON; returns status and parsed body."""
    payload = {"dataframe_split": {"columns": ["image"], "data": [[image] for image in images]}}
    request = urllib.request.Request(
        f"{base}/invocations", json.dumps(payload).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def test_mlflow_models_serve_answers_with_labels(pipeline, scenario, tmp_path):
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
        assert right >= 6 and len(body["predictions"][0]["probabilities"]) == 10
        status, body = invoke(base, [test.images[0].permute(1, 2, 0).tolist()])  # H x W x 3
        assert status == 200 and body["predictions"][0]["label"] in classes
        for bad, message in (
            ("bm90IGFuIGltYWdl", "cannot decode image"),  # base64 of "not an image"
            ([[[1, 2], [3, 4]]], "got shape (1, 2, 2)"),
            ([[0.5, 0.2], [0.1, 0.9]], "got dtype float64"),
            ("/etc/hostname", "reads no files"),
        ):
            status, body = invoke(base, [bad])
            assert 400 <= status < 500, (bad, status, body)
            assert message in body.get("message", ""), (bad, body)


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
