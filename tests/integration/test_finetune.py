"""The finetune stage end to end on tiny real Fashion-MNIST (prepare -> extract -> train_head ->
finetune): epoch 0 is the probe, the head fits the fine-tune's input size, a phase that makes
things worse is rolled back, and the run never ends below its start. Resume, kills, damaged
checkpoints and the NaN guard are in tests/reliability."""

from __future__ import annotations

import json
import logging
import math

import pytest

from tests.conftest import small_config
from thawline.data.store import load_split
from thawline.files import read_json
from thawline.models.storage import load_classifier
from thawline.stages import extract, finetune, train_head
from thawline.training.validate import metrics_from_sums, validation_sums

# fp32 features stored as float32: the probe's cached features are then exactly what the live
# model computes, so epoch 0 can be held to the probe's accuracy to the image.
EXACT = {"image_size": 32, "batch_size": 32, "precision": "fp32", "dtype": "float32"}
TINY = {"batch_size": 32, "precision": "fp32", "device": "cpu", "epochs_per_phase": 1}


def config(prepared, tmp_path, **finetune_params):
    names = ("features", "head", "finetune", "checkpoints")
    paths = {name: str(tmp_path / name) for name in names} | {"prepared": str(prepared)}
    return small_config(tmp_path, paths=paths, extract=EXACT, head={"epochs": 30},
                        finetune=TINY | finetune_params)  # fmt: skip


@pytest.fixture(scope="module")
def probe(prepared_small, tmp_path_factory):
    """Features (fp32, 32 px) and the linear probe trained on them, shared by these tests."""
    tmp = tmp_path_factory.mktemp("probe")
    cfg = config(prepared_small.paths.prepared, tmp)
    extract.run(cfg, progress=False)
    train_head.run(cfg, progress=False)
    return cfg


def with_probe(probe, tmp_path, **finetune_params):
    cfg = config(probe.paths.prepared, tmp_path, **finetune_params)
    paths = {"features": probe.paths.features, "head": probe.paths.head}
    return cfg.model_copy(update={"paths": cfg.paths.model_copy(update=paths)})


def probe_val_accuracy(cfg) -> float:
    meta = read_json(cfg.paths.head / "head.json")
    return next(r["val_accuracy"] for r in meta["history"] if r["epoch"] == meta["best_epoch"])


def test_stage_fine_tunes_the_probe_and_saves_a_loadable_model(probe, tmp_path):
    cfg = with_probe(probe, tmp_path, strategy="gradual", gradual_steps=1, image_size=32,
                     rollback_tolerance=1.0)  # fmt: skip
    seen = []
    result = finetune.run(cfg, progress=False, on_epoch_end=lambda e, m: seen.append(e))
    assert seen == [0, 1, 2]  # epoch 0: the starting model, validated before any step
    assert 0 <= result.metrics["best_val_accuracy"] <= 1 and result.metrics["epochs"] == 2
    model = load_classifier(result.outputs["model"])
    assert model.preprocess.size == 32
    images = load_split(cfg.paths.prepared, "test").images[:4]
    assert model(images).shape == (4, 10)
    record = json.loads((cfg.paths.finetune / "record.json").read_text())
    assert record["strategy"] == "gradual" and record["trained"] and len(record["history"]) == 3
    assert record["epochs"] == 2 and record["start"]["head"] == "probe"


def test_epoch_zero_is_the_probe_and_the_head_only_phase_beats_a_uniform_guess(probe, tmp_path):
    cfg = with_probe(probe, tmp_path, strategy="gradual", gradual_steps=1, image_size=32)
    finetune.run(cfg, progress=False)
    record = read_json(cfg.paths.finetune / "record.json")
    zero, first = record["history"][0], record["history"][1]
    assert zero["epoch"] == 0 and "train_loss" not in zero
    assert abs(zero["val_accuracy"] - probe_val_accuracy(cfg)) <= 0.005
    assert first["unfrozen_groups"] == 0 and first["train_loss"] < math.log(10)
    assert record["start"]["warnings"] == []


def test_a_fine_tune_at_another_size_starts_from_a_head_fit_at_that_size(probe, tmp_path):
    """The probe saw 32 px features; at 48 px its head is fit again, and epoch 0 matches it."""
    cfg = with_probe(probe, tmp_path, strategy="full", image_size=48)
    finetune.run(cfg, progress=False)
    record = read_json(cfg.paths.finetune / "record.json")
    start = record["start"]
    assert start["head"] == "refit at 48 px" and start["refit"]["image_size"] == 48
    assert start["probe_image_size"] == 32
    assert abs(record["history"][0]["val_accuracy"] - start["refit"]["val_accuracy"]) <= 0.005
    assert start["warnings"] == [] and record["image_size"] == 48


def test_a_too_high_lr_is_rolled_back_and_the_run_ends_no_worse_than_epoch_zero(
    probe, tmp_path, caplog
):
    """LR 0.01 on every group: the loss blows up in the first steps (with BatchNorm on its
    running statistics a too-high LR diverges rather than slides); the phase is rolled back to
    epoch 0 and retried at a tenth of its LR, and the saved model is no worse than the start."""
    cfg = with_probe(probe, tmp_path, strategy="full", image_size=32, base_lr=0.01,
                     lr_decay=1.0, epochs_per_phase=2)  # fmt: skip
    with caplog.at_level(logging.WARNING):
        result = finetune.run(cfg, progress=False)
    record = read_json(cfg.paths.finetune / "record.json")
    first = record["rollbacks"][0]
    assert first["phase"] == 1 and first["action"] == "retry" and not first["retry"]
    assert "loss diverged" in first["reason"] and first["best_epoch"] == 0
    assert "rolled back to epoch 0's weights" in caplog.text
    retried = [row for row in record["history"] if row.get("lr_scale", 1) < 1]
    assert retried and retried[0]["lr_head"] == pytest.approx(0.001)
    start = record["history"][0]["val_accuracy"]
    assert record["best"]["val_accuracy"] >= start
    # The saved model is the best epoch's (at worst the start): score it again to be sure.
    model = load_classifier(result.outputs["model"])
    val = load_split(cfg.paths.prepared, "val")
    again = metrics_from_sums(validation_sums(model, val.images, val.labels))
    assert again["val_accuracy"] == pytest.approx(record["best"]["val_accuracy"], abs=1e-6)
    assert again["val_accuracy"] >= start


def test_a_phase_that_ends_worse_is_rolled_back_once_then_the_thaw_stops(probe, tmp_path):
    """LR 0.001 everywhere stays finite but wrecks the features: the phase ends below epoch 0
    (0.14 against 0.45 val accuracy on this split), is rolled back and retried at 0.0001; without
    a retry factor the thaw stops at once. (At 0.002 the loss diverges on this split, the other
    rollback, tested above.)"""
    cfg = with_probe(probe, tmp_path, strategy="full", image_size=32, base_lr=0.001,
                     lr_decay=1.0, epochs_per_phase=2)  # fmt: skip
    finetune.run(cfg, progress=False)
    record = read_json(cfg.paths.finetune / "record.json")
    first = record["rollbacks"][0]
    assert first["reason"] == "ended worse" and first["action"] == "retry"
    assert first["val_accuracy"] < first["best_val_accuracy"] - 0.01
    assert record["epochs"] > 2  # the retry's epochs came after the phase's own
    stop = cfg.model_copy(update={"finetune": cfg.finetune.model_copy(
        update={"retry_lr_factor": None})})  # fmt: skip
    finetune.run(stop, progress=False)
    record = read_json(cfg.paths.finetune / "record.json")
    assert [r["action"] for r in record["rollbacks"]] == ["stop"] and record["epochs"] == 2
    assert record["best_epoch"] == 0 and record["best"] == record["history"][0]


def test_lr_auto_finds_each_phases_lr_when_it_starts_and_records_it(probe, tmp_path):
    cfg = with_probe(probe, tmp_path, strategy="gradual", gradual_steps=1, image_size=32,
                     base_lr="auto")  # fmt: skip
    result = finetune.run(cfg, progress=False)
    record = read_json(cfg.paths.finetune / "record.json")
    finds = record["lr_finds"]
    thawed = record["history"][2]["unfrozen_groups"]
    assert [(f["phase"], f["groups"]) for f in finds] == [(1, 0), (2, thawed)]
    for found, row in zip(finds, record["history"][1:], strict=True):
        assert 1e-7 < found["lr"] < 10 and "lrs" not in found  # the curve is a plot, not JSON
        assert row["lr_head"] == pytest.approx(found["lr"])  # the phase ran at what was found
        assert result.metrics[f"lr_found_phase{found['phase']}"] == pytest.approx(found["lr"])
        assert (cfg.paths.finetune / f"lr_find_phase{found['phase']}.png").is_file()
    assert record["best"]["val_accuracy"] >= record["history"][0]["val_accuracy"]
    fixed = cfg.model_copy(update={"finetune": cfg.finetune.model_copy(update={"base_lr": 1e-3})})
    finetune.run(fixed, progress=False)  # a fixed LR again: no range test, no plot left over
    assert read_json(cfg.paths.finetune / "record.json")["lr_finds"] == []
    assert not list(cfg.paths.finetune.glob("lr_find_phase*.png"))


def test_with_ema_the_saved_model_is_the_weights_its_best_names(probe, tmp_path):
    """Each epoch validates the raw and the averaged weights; the better is the epoch's best,
    and the saved model scores exactly what the record says, whichever it was."""
    cfg = with_probe(probe, tmp_path, strategy="full", image_size=32, epochs_per_phase=2,
                     ema=True, ema_decay=0.99)  # fmt: skip
    result = finetune.run(cfg, progress=False)
    record = read_json(cfg.paths.finetune / "record.json")
    assert all("ema_val_accuracy" in row for row in record["history"][1:])
    best = record["best"]
    assert record["best_epoch"] == 0 or best["weights"] in ("raw", "ema")
    model = load_classifier(result.outputs["model"])
    val = load_split(cfg.paths.prepared, "val")
    smoothing = cfg.finetune.label_smoothing  # the loss as training scored it
    again = metrics_from_sums(validation_sums(model, val.images, val.labels,
                                              label_smoothing=smoothing))  # fmt: skip
    assert again["val_accuracy"] == pytest.approx(best["val_accuracy"], abs=1e-6)
    assert again["val_loss"] == pytest.approx(best["val_loss"], rel=1e-4)  # tells the two apart
