"""``register``'s model at work: the saved model reproduces the head, ``predict_paths`` and its
CLI, and registration without tracking, against a real SQLite store in tmp_path. The champion
gate, retries, dangling aliases, parallel registrations and serving are in
tests/reliability/test_registry.py."""

from __future__ import annotations

from pathlib import Path

import mlflow.artifacts
import numpy as np
import onnxruntime
import pytest
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tests.registry_support import NAME, pipeline_config
from thawline.cli import main as cli_main
from thawline.data.images import BadImageError
from thawline.data.store import load_split, read_manifest
from thawline.evaluation.temperature import scale
from thawline.features.cache import load_features
from thawline.files import read_json, write_json
from thawline.models.storage import load_classifier
from thawline.predict import main_predict, predict_paths
from thawline.stages import register
from thawline.stages.register import png_bytes
from thawline.tracking import RegistryError, load_model
from thawline.tracking.pyfunc import classify


@pytest.fixture
def pipeline(registry_pipeline):
    return registry_pipeline


@pytest.fixture
def scenario(registry_scenario):
    return registry_scenario


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


def test_predict_with_tta_averages_each_image_and_its_mirror(pipeline, scenario, tmp_path, capsys):
    cfg, uri = pipeline.cfg, f"models:/{NAME}@champion"
    pipeline.use("good")
    register.run(cfg, progress=False)
    images = load_split(cfg.paths.prepared, "test").images[:8]
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(images):
        (folder / f"{i}.png").write_bytes(png_bytes(image))

    def probs(model: str, tta: str = "none") -> np.ndarray:
        rows = predict_paths(model, [folder], top_k=10, tracking_uri=cfg.tracking.uri, tta=tta)
        return np.array([[p for _, p in sorted(row["top"])] for row in rows])

    # By hand: the model's input and its mirror (after resize and centre crop, as training
    # flips), softmax of each, averaged; classes in sorted order, as probs() lists them.
    model = load_classifier(cfg.paths.model)
    order = np.argsort(model.classes)
    with torch.inference_mode():
        x = model.preprocess(images)
        by_hand = sum(torch.softmax(model(v), dim=1) for v in (x, x.flip(-1))).numpy() / 2
    registered = probs(uri, "flip")  # the pyfunc's tta param
    assert np.allclose(registered, by_hand[:, order], atol=1e-6)
    assert np.allclose(probs(str(cfg.paths.model), "flip"), registered, atol=1e-6)
    assert not np.allclose(registered, probs(uri), atol=1e-3)
    assert probs(uri, "flip_shift").shape == registered.shape
    assert cli_main(["predict", "--model", uri, "--tracking-uri", cfg.tracking.uri,
                     "--tta", "flip_shift", str(folder)]) == 0  # fmt: skip
    assert "0.png" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # argparse: "invalid choice: 'flop' (choose from ...)"
        cli_main(["predict", "--tta", "flop", str(folder)])
    assert "choose from" in capsys.readouterr().err


def test_predict_errors_name_the_problem(pipeline, scenario, tmp_path, capsys):
    with pytest.raises(BadImageError, match="no such file or folder"):
        predict_paths(str(pipeline.cfg.paths.model), [tmp_path / "missing.png"])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG truncated")
    with pytest.raises(MlflowException, match="broken.png: cannot decode image"):
        predict_paths(str(pipeline.cfg.paths.model), [broken])
    # The CLI: bad input (exit 2), the file named, not dressed as a tracking failure.
    assert cli_main(["predict", "--model", str(pipeline.cfg.paths.model), str(broken)]) == 2
    err = capsys.readouterr().err
    assert "broken.png: cannot decode image" in err and "MLflow" not in err
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
    assert result.metrics == {}  # the version and the verdict are never metrics to chart
    assert (cfg.paths.model / "model.safetensors").is_file()
    assert not (tmp_path / "unused").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_moved_project_still_predicts_from_its_registry(pipeline, scenario, tmp_path):
    """MLflow records absolute artifact URIs; after ``mv project project2`` predict used to fail
    with ``No such artifact: ''``. The artifact folder is found again beside the database."""
    project = Path(pipeline.cfg.tracking.artifacts).parent
    test = load_split(pipeline.cfg.paths.prepared, "test")
    image = tmp_path / "one.png"
    image.write_bytes(png_bytes(test.images[0]))
    moved = project.with_name(project.name + "-moved")
    project.rename(moved)
    try:
        uri = f"sqlite:///{moved / 'mlflow.db'}"
        rows = predict_paths(f"models:/{NAME}@champion", [image], tracking_uri=uri)
        assert rows[0]["label"] in read_manifest(pipeline.cfg.paths.prepared)["classes"]
        (moved / "mlruns").rename(moved / "elsewhere")
        try:
            with pytest.raises(RegistryError, match=r"artifact missing: not at .*mlruns.* nor at"):
                predict_paths(f"models:/{NAME}@champion", [image], tracking_uri=uri)
        finally:
            (moved / "elsewhere").rename(moved / "mlruns")
    finally:
        moved.rename(project)


def test_the_temperature_and_the_onnx_file_travel_with_the_registered_version(pipeline, tmp_path):
    """evaluate's temperature goes into the saved spec, so the registered pyfunc and the ONNX
    file logged with the version output the same calibrated probabilities."""
    cfg = pipeline_config(tmp_path, pipeline.cfg.paths.prepared, pipeline.cfg.paths.features,
                          tmp_path / "store", name="calibrated")  # fmt: skip
    cfg = cfg.model_copy(update={"registry": cfg.registry.model_copy(update={"onnx": True})})
    pipeline.use("good", cfg)
    write_json(cfg.paths.evaluation / "calibration.json",
               {"temperature": 2.0, "kept": True, "reason": "fitted on val"})  # fmt: skip
    record = register.run(cfg, progress=False).info
    assert record["onnx"]["exported"] and record["onnx"]["max_abs_difference"] <= 1e-4
    assert record["onnx"]["checked_examples"] == 64
    assert read_json(cfg.paths.model / "model.json")["temperature"] == 2.0

    test = load_split(cfg.paths.prepared, "test")
    pixels = test.images[:40].permute(0, 2, 3, 1)
    uri = f"models:/calibrated/{record['version']}"
    served = np.array(load_model(uri, cfg.tracking.uri).predict(list(pixels.numpy()))
                      ["probabilities"].tolist())  # fmt: skip
    plain = load_classifier(cfg.paths.model)
    del plain.spec["temperature"]
    uncalibrated = np.stack(classify(plain, list(pixels.numpy()))["probabilities"])
    assert np.allclose(served, scale(uncalibrated, 2.0), atol=1e-5)
    assert np.array_equal(served.argmax(1), uncalibrated.argmax(1))  # T never changes a label

    downloaded = Path(
        mlflow.artifacts.download_artifacts(
            uri, dst_path=str(tmp_path / "dl"), tracking_uri=cfg.tracking.uri
        )
    )
    (onnx_file,) = downloaded.rglob("model.onnx")
    run = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    portable = run.run(None, {"pixels": pixels.numpy()})[0]
    # The graph resizes in float (the uint8 path's passes, rounded), the pyfunc in uint8 (as
    # training saw): close, not equal.
    assert np.mean(portable.argmax(1) == served.argmax(1)) >= 0.95
    assert np.abs(portable - served).mean() < 0.01, np.abs(portable - served).mean()
    tags = MlflowClient(cfg.tracking.uri).get_model_version("calibrated", record["version"]).tags
    assert tags["thawline.temperature"] == "2.0"
