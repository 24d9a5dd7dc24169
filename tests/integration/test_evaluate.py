"""``evaluate`` and the HTML report on a tiny real pipeline: prepare, extract, a head, evaluate."""

from __future__ import annotations

import base64
import csv
import json
import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from sklearn.metrics import roc_auc_score

from tests.conftest import small_config
from thawline.data.store import load_split, read_manifest, write_store
from thawline.evaluation import EvaluationError
from thawline.evaluation.metrics import top_losses
from thawline.evaluation.predictions import load_predictions
from thawline.features.cache import CacheError, load_features
from thawline.files import sha256_file
from thawline.models.head import Head
from thawline.models.storage import load_head, save_head
from thawline.reporting.html import write_report
from thawline.stages import evaluate, extract

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EPOCHS = 25


def with_paths(shared: Path, tmp: Path, **evaluate_opts):
    """Shared prepared data + features; a fresh head, evaluation and report under ``tmp``."""
    return small_config(
        tmp,
        paths={
            "prepared": str(shared / "prepared"),
            "features": str(shared / "features"),
            "head": str(tmp / "head"),
            "evaluation": str(tmp / "evaluation"),
            "report": str(tmp / "report.html"),
        },
        evaluate={"cams": True, **evaluate_opts},
    )


def fit_quick_head(cfg, num_classes: int) -> list[dict]:
    """A linear head fitted full-batch with AdamW on the cached train features, then saved."""
    torch.manual_seed(0)
    x, y = load_features(cfg.paths.features, "train")
    vx, vy = load_features(cfg.paths.features, "val")
    head = Head(x.shape[1], num_classes)
    head.set_standardisation(x)
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3)
    history = []
    for epoch in range(1, EPOCHS + 1):
        loss = torch.nn.functional.cross_entropy(head(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            logits = head(vx)
        history.append(
            {
                "epoch": epoch,
                "train_loss": loss.item(),
                "val_loss": torch.nn.functional.cross_entropy(logits, vy).item(),
                "val_accuracy": (logits.argmax(1) == vy).float().mean().item(),
            }
        )
    save_head(head.eval(), cfg.paths.head, {"history": history, "seconds": 0.5})
    return history


@pytest.fixture(scope="module")
def ten_classes(prepared_small, tmp_path_factory) -> Path:
    """The shared prepared store (10 classes) with its features extracted once."""
    shared = tmp_path_factory.mktemp("eval10")
    (shared / "prepared").symlink_to(prepared_small.paths.prepared.resolve())
    extract.run(with_paths(shared, shared), progress=False)
    return shared


@pytest.fixture(scope="module")
def two_classes(prepared_small, tmp_path_factory) -> Path:
    """A 2-class store (T-shirt/top vs Shirt) cut from the shared one, with features."""
    shared = tmp_path_factory.mktemp("eval2")
    source = prepared_small.paths.prepared
    manifest = read_manifest(source)
    keep = {0: 0, 6: 1}  # T-shirt/top -> 0 (negative), Shirt -> 1 (positive)
    splits = {}
    for name in ("train", "val", "test"):
        data = load_split(source, name)
        rows = [i for i, y in enumerate(data.labels.tolist()) if y in keep]
        data.keys = [data.keys[i] for i in rows]
        data.hashes = [data.hashes[i] for i in rows]
        data.labels = torch.tensor([keep[data.labels[i].item()] for i in rows])
        data.tensors = {n: t[rows] for n, t in data.tensors.items()}  # named tensors per item
        splits[name] = data
    classes = [manifest["classes"][0], manifest["classes"][6]]
    write_store(shared / "prepared", splits, {"image_size": 28, "classes": classes})
    extract.run(with_paths(shared, shared), progress=False)
    return shared


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


def test_evaluate_head_on_ten_classes(ten_classes, tmp_path, caplog):
    cfg = with_paths(ten_classes, tmp_path, gallery_size=6, confused_top=5)
    history = fit_quick_head(cfg, 10)
    with caplog.at_level(logging.WARNING):
        result = evaluate.run(cfg, progress=False)
    assert "test examples, so accuracy is known to within" in caplog.text  # a tiny test split
    out = cfg.paths.evaluation
    assert result.outputs == {"evaluation": out}

    saved = load_predictions(out / "predictions.safetensors")
    test_fingerprint = read_manifest(cfg.paths.prepared)["splits"]["test"]["fingerprint"]
    assert saved.meta == {
        "split": "test",
        "split_fingerprint": test_fingerprint,
        "model": "head_only",
        "weights_sha256": sha256_file(cfg.paths.head / "head.safetensors"),
    }
    assert result.info["model"] == "head_only" and result.info["skipped"] == {}
    assert "only model trained" in result.info["reason"]
    with safe_open(str(out / "predictions.safetensors"), framework="pt") as f:
        dtypes = {name: f.get_tensor(name).dtype for name in f.keys()}  # noqa: SIM118
    assert dtypes == {"labels": torch.int64, "pred": torch.int64, "correct": torch.uint8,
                      "probs": torch.float32}  # fmt: skip
    assert saved.labels.tolist() == load_split(cfg.paths.prepared, "test").labels.tolist()
    assert np.allclose(saved.probs.sum(axis=1), 1, atol=1e-5)
    assert saved.pred.tolist() == saved.probs.argmax(axis=1).tolist()

    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"accuracy", "macro_f1", "ece", "loss", "brier", "head_only_accuracy",
                            "examples", "accuracy_ci_low", "accuracy_ci_high", "temperature",
                            "uncalibrated_ece", "uncalibrated_loss",
                            "uncalibrated_brier"}  # fmt: skip
    # Every model's test accuracy (dvc metrics diff compares strategies); here the head only
    assert metrics["head_only_accuracy"] == metrics["accuracy"]
    assert metrics["examples"] == len(saved.labels)
    assert metrics["accuracy_ci_low"] < metrics["accuracy"] < metrics["accuracy_ci_high"]
    # MLflow also gets each model's training time, which is not a metric of the model
    assert result.metrics == metrics | {"head_only_train_seconds": pytest.approx(0.5)}
    assert metrics["accuracy"] == pytest.approx(saved.correct.mean())
    assert metrics["accuracy"] > 0.3  # well above chance (0.1): the head and rows line up
    head, _ = load_head(cfg.paths.head)
    features, labels = load_features(cfg.paths.features, "test")
    with torch.no_grad():
        logits = head(features)
    loss = torch.nn.functional.cross_entropy(logits, labels).item()
    assert metrics["uncalibrated_loss"] == pytest.approx(loss, rel=1e-4)
    # Temperature scaling, fitted on val: the test loss is that of logits / T, the argmax (and
    # so the accuracy) is the head's own, and the record says why T was kept or not.
    calibrated = torch.nn.functional.cross_entropy(logits / metrics["temperature"], labels)
    assert metrics["loss"] == pytest.approx(calibrated.item(), rel=1e-4)
    assert metrics["accuracy"] == pytest.approx((logits.argmax(1) == labels).float().mean())
    fit = json.loads((out / "calibration.json").read_text())
    assert fit["temperature"] == metrics["temperature"] and fit["reason"]
    assert fit["val_examples"] == len(load_split(cfg.paths.prepared, "val").labels)
    if fit["kept"]:
        assert fit["val_nll_after"] < fit["val_nll_before"]

    matrix = np.array(json.loads((out / "confusion_matrix.json").read_text())["matrix"])
    assert matrix.sum() == 200 and np.trace(matrix) == saved.correct.sum()
    per_class = json.loads((out / "per_class.json").read_text())
    assert [r["support"] for r in per_class] == [20] * 10
    confused = json.loads((out / "most_confused.json").read_text())
    assert len(confused) <= 5
    assert [r["count"] for r in confused] == sorted((r["count"] for r in confused), reverse=True)

    check_plot_data(out / "plots", saved, history)
    for name in ("confusion_matrix.png", "reliability.png", "curves.png", "gallery.png",
                 "strategy_curves.png", "samples.png", "confused_examples.png",
                 "cams_top_losses.png", "cams_per_class.png"):  # fmt: skip
        assert is_png(out / name), name
    assert not (out / "roc.png").exists()
    check_cams(out, saved, cfg.evaluate.gallery_size)


def check_cams(out: Path, saved, gallery_size: int):
    """Grad-CAM maps at the model's input size, in [0, 1], for the top losses and one correct
    example per class (the predicted class each time)."""
    cams = load_file(str(out / "cams.safetensors"))
    size = 32  # extract.image_size of small_config: what the model sees
    assert cams["top_losses.maps"].shape == (gallery_size, size, size)
    assert cams["top_losses.rows"].tolist() == top_losses(saved.probs, saved.labels,
                                                          gallery_size).tolist()  # fmt: skip
    per_class = cams["per_class.rows"].numpy()
    assert cams["per_class.maps"].shape == (len(per_class), size, size)
    assert saved.correct[per_class].all()  # correct examples...
    assert sorted(saved.labels[per_class].tolist()) == sorted(set(saved.labels[per_class]))
    for name in ("top_losses", "per_class"):  # ...explained for the class the model predicted
        assert cams[f"{name}.targets"].tolist() == saved.pred[cams[f"{name}.rows"]].tolist()
        maps = cams[f"{name}.maps"].float()
        assert maps.min() >= 0 and maps.max() <= 1 and torch.isfinite(maps).all()


def check_plot_data(plots: Path, saved, history):
    with open(plots / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    classes = read_classes(plots)
    assert len(rows) == 200
    assert sum(r["actual"] == r["predicted"] for r in rows) == saved.correct.sum()
    assert {r["actual"] for r in rows} == set(classes)
    with open(plots / "calibration.csv") as f:
        bins = list(csv.DictReader(f))
    assert sum(int(b["count"]) for b in bins) == 200
    with open(plots / "history.csv") as f:
        epochs = list(csv.DictReader(f))
    assert [int(e["epoch"]) for e in epochs] == list(range(1, len(history) + 1))
    # history.csv keeps 6 decimals
    assert float(epochs[-1]["val_accuracy"]) == pytest.approx(history[-1]["val_accuracy"], abs=1e-6)


def read_classes(plots: Path) -> list[str]:
    return json.loads((plots.parent / "confusion_matrix.json").read_text())["classes"]


def test_two_classes_get_roc_auc_sensitivity_specificity(two_classes, tmp_path):
    cfg = with_paths(two_classes, tmp_path, gallery_size=0)
    fit_quick_head(cfg, 2)
    (cfg.paths.evaluation).mkdir(parents=True)
    (cfg.paths.evaluation / "gallery.png").write_bytes(b"stale")  # from an earlier run
    metrics = evaluate.run(cfg, progress=False).metrics
    saved = load_predictions(cfg.paths.evaluation / "predictions.safetensors")
    assert len(saved.labels) == 40 and set(saved.labels.tolist()) == {0, 1}
    positives = saved.labels == 1
    assert metrics["sensitivity"] == pytest.approx(np.mean(saved.pred[positives] == 1))
    assert metrics["specificity"] == pytest.approx(np.mean(saved.pred[~positives] == 0))
    # The file's probabilities are float32: a confident head's round to ties near 0 and 1 (10
    # distinct values of 40 here), which the float64 metric still tells apart.
    from_file = roc_auc_score(saved.labels, saved.probs[:, 1])
    assert metrics["roc_auc"] == pytest.approx(from_file, abs=0.01)
    assert metrics["roc_auc"] > 0.5
    assert set(json.loads((cfg.paths.evaluation / "metrics.json").read_text())) == {
        "accuracy", "macro_f1", "ece", "loss", "brier", "roc_auc", "sensitivity", "specificity",
        "head_only_accuracy", "examples", "accuracy_ci_low", "accuracy_ci_high", "temperature",
        "uncalibrated_ece", "uncalibrated_loss", "uncalibrated_brier",
    }  # fmt: skip
    assert is_png(cfg.paths.evaluation / "roc.png")
    assert (cfg.paths.evaluation / "plots" / "roc.csv").read_text().startswith("fpr,tpr\n")
    assert not (cfg.paths.evaluation / "gallery.png").exists()  # gallery_size 0: none


def test_missing_or_mismatched_inputs_name_the_file(ten_classes, two_classes, tmp_path):
    cfg = with_paths(ten_classes, tmp_path)
    with pytest.raises(EvaluationError, match=r"head\.json: no trained head.*train_head"):
        evaluate.run(cfg, progress=False)
    save_head(Head(1280, 10), cfg.paths.head, {"history": [], "feature_fingerprint": "0" * 64})
    with pytest.raises(EvaluationError, match=r"head\.json: the head was trained on other feat"):
        evaluate.run(cfg, progress=False)
    save_head(Head(7, 10), cfg.paths.head, {"history": []})
    with pytest.raises(EvaluationError, match=r"head\.json: the head takes 7 features"):
        evaluate.run(cfg, progress=False)
    no_cache = small_config(tmp_path, paths={
        "prepared": str(ten_classes / "prepared"), "features": str(tmp_path / "nothing"),
        "head": str(tmp_path / "head"), "evaluation": str(tmp_path / "evaluation"),
    })  # fmt: skip
    with pytest.raises(CacheError, match=r"nothing/manifest\.json: no feature cache"):
        evaluate.run(no_cache, progress=False)
    other_data = small_config(tmp_path, paths={
        "prepared": str(ten_classes / "prepared"), "features": str(two_classes / "features"),
        "head": str(tmp_path / "head"), "evaluation": str(tmp_path / "evaluation"),
    })  # fmt: skip
    with pytest.raises(CacheError, match="extracted from other prepared data"):
        evaluate.run(other_data, progress=False)
    assert not (cfg.paths.evaluation / "metrics.json").exists()


def test_report_embeds_metrics_plots_and_strategies(ten_classes, tmp_path):
    cfg = with_paths(ten_classes, tmp_path, gallery_size=4)
    with pytest.raises(EvaluationError, match="no evaluation here"):
        write_report(cfg)
    fit_quick_head(cfg, 10)
    metrics = evaluate.run(cfg, progress=False).metrics
    other = tmp_path / "other"
    shutil.copytree(cfg.paths.evaluation, other)
    strategies = [("head_only", cfg.paths.evaluation), ("<script>x</script>", other),
                  ("scratch", tmp_path / "never-ran")]  # fmt: skip
    page = write_report(cfg, strategies).read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert f"{metrics['accuracy']:.4f}" in page and f"{metrics['macro_f1']:.4f}" in page
    assert "head_only" in page and "T-shirt/top" in page and "Ankle boot" in page
    assert "<script>" not in page and "&lt;script&gt;x&lt;/script&gt;" in page
    assert "<td>scratch" not in page  # a strategy that did not run gets no row
    images = page.split("data:image/png;base64,")[1:]
    # confusion, reliability, every model's curves, gallery, samples, confused examples, two
    # CAM grids (no ROC for 10 classes)
    assert len(images) == 8
    assert all(base64.b64decode(img.split("'")[0])[:8] == PNG_MAGIC for img in images)
    assert write_report(cfg) == cfg.paths.report and cfg.paths.report.is_file()
    page = cfg.paths.report.read_text()
    for title in ("Decision", "Headline metrics", "Strategies", "Data", "Training curves",
                  "Confusion", "Calibration", "Class-activation maps", "Top losses", "Per class",
                  "Configuration"):  # fmt: skip
        assert f"<h2>{title}</h2>" in page, title
    assert "Not registered yet" in page  # the gate's place, before register ran
    assert "Temperature T = " in page and "before scaling" in page
    assert "tf_efficientnet_lite0" in page  # the config and backbone


CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)  # fmt: skip


@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium on this machine")
def test_the_report_renders_in_headless_chromium(ten_classes, tmp_path):
    """The page a person opens: Chromium lays it out (every section, every image decoded) and
    takes a screenshot, as docs/report.png was taken."""
    cfg = with_paths(ten_classes, tmp_path, gallery_size=8)
    fit_quick_head(cfg, 10)
    evaluate.run(cfg, progress=False)
    page = write_report(cfg)
    shot = tmp_path / "report.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'ud'}"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert dom.returncode == 0, dom.stderr[-2000:]
    for anchor in ("decision", "metrics", "strategies", "data", "curves", "confusion",
                   "calibration", "cams", "losses", "classes", "config"):  # fmt: skip
        assert f'id="{anchor}"' in dom.stdout, anchor
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1200,4000",
                    page.as_uri()], capture_output=True, timeout=120, check=True)  # fmt: skip
    assert shot.read_bytes()[:8] == PNG_MAGIC and shot.stat().st_size > 50_000
