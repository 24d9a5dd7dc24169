"""``train_head``: heads on cached features, deterministic, early stopping, sweep, NaN guard."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import small_config
from thawline.cli import main
from thawline.config import HeadParams, dump_config
from thawline.features.cache import load_features
from thawline.models.storage import load_head
from thawline.stages import extract, train_head
from thawline.training.fit_head import NonFiniteLossError, class_weights, fit_head


@pytest.fixture(scope="module")
def cached(prepared_small, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cache")
    cfg = small_config(
        tmp, paths={"prepared": str(prepared_small.paths.prepared), "features": str(tmp / "f")}
    )
    extract.run(cfg, progress=False)
    return cfg


def config(cached, tmp_path, **head):
    return small_config(
        tmp_path,
        paths={
            "prepared": str(cached.paths.prepared),
            "features": str(cached.paths.features),
            "head": str(tmp_path / "head"),
        },
        head={"epochs": 15, "batch_size": 64, "lr": 0.003, **head},
    )


def test_head_trains_on_the_cache_and_is_saved(cached, tmp_path, monkeypatch):
    def no_backbone(*_a, **_k):
        raise AssertionError("train_head must never build the backbone")

    monkeypatch.setattr("thawline.models.backbone.create_backbone", no_backbone)
    epochs = []
    result = train_head.run(
        config(cached, tmp_path), progress=False, on_epoch_end=lambda e, m: epochs.append((e, m))
    )
    # 10 classes, 178 training images at 32 px, 22 val images: the bar is "well above chance
    # (0.1)" rather than a figure one image can move
    assert result.metrics["best_val_accuracy"] > 0.3
    head, meta = load_head(tmp_path / "head")
    assert meta["best_epoch"] == result.metrics["best_epoch"]
    assert [e for e, _ in epochs] == [h["epoch"] for h in meta["history"]]
    assert {"train_loss", "val_loss", "val_accuracy", "lr"} <= set(epochs[0][1])
    x, y = load_features(cached.paths.features, "val")
    accuracy = (head(x).argmax(1) == y).float().mean().item()
    assert accuracy == pytest.approx(result.metrics["best_val_accuracy"])


def test_early_stopping_keeps_the_best_epoch(cached, tmp_path):
    result = train_head.run(config(cached, tmp_path, epochs=200, patience=2), progress=False)
    assert result.metrics["epochs"] < 200
    assert result.metrics["epochs"] - result.metrics["best_epoch"] <= 2


def test_sweep_trains_the_grid_and_keeps_the_best(cached, tmp_path):
    seen = []
    cfg = config(
        cached,
        tmp_path,
        epochs=5,
        sweep={
            "enabled": True,
            "lr": [1e-4, 3e-3],
            "weight_decay": [0.0],
            "type": ["linear", "mlp"],
        },
    )
    result = train_head.run(cfg, progress=False, on_candidate=lambda p, m, h: seen.append((p, m)))
    _, meta = load_head(tmp_path / "head")
    assert len(meta["sweep"]) == len(seen) == 4
    best = max(meta["sweep"], key=lambda row: row["val_accuracy"])
    assert result.metrics["best_val_accuracy"] == best["val_accuracy"]
    assert meta["params"] == {k: best[k] for k in ("type", "lr", "weight_decay")}


def test_nan_loss_stops_training_and_writes_nothing(tmp_path):
    x = torch.randn(64, 8)
    x[3, 2] = float("nan")
    y = torch.randint(0, 3, (64,))
    with pytest.raises(NonFiniteLossError, match="lower head.lr"):
        fit_head((x, y), None, 3, HeadParams(epochs=3, batch_size=16), seed=0)


def test_balanced_class_weights_are_inverse_frequency():
    weights = class_weights(torch.tensor([0, 0, 0, 1]), 2)
    assert weights.tolist() == pytest.approx([4 / 6, 2.0])


def test_lr_auto_runs_the_range_test_uses_its_valley_and_records_it(cached, tmp_path, capsys):
    cfg = config(cached, tmp_path, lr="auto")
    result = train_head.run(cfg, progress=False)
    meta = load_head(cfg.paths.head)[1]
    found = meta["lr_find"]
    assert meta["params"]["lr"] == found["valley"] == result.metrics["lr_found"]
    assert 1e-7 < found["valley"] < 10 and len(found["lrs"]) == len(found["losses"]) >= 20
    assert (cfg.paths.head / "lr_find.png").stat().st_size > 1000
    # 178 images, 45 steps: the valley (like the fixed 1e-3) leaves this head short of
    # converged; above chance all the same. Accuracy against the fixed LR: bench/lr_find_head.py.
    assert result.metrics["best_val_accuracy"] > 0.15
    fixed = config(cached, tmp_path, lr=0.003)
    train_head.run(fixed, progress=False)
    assert not (fixed.paths.head / "lr_find.png").exists()  # no stale plot from the auto run
    params = tmp_path / "params.json"
    params.write_text(json.dumps(dump_config(cfg)))
    assert main(["lr-find", "-p", str(params)]) == 0
    printed = capsys.readouterr()
    assert f"valley {found['valley']:.2e}" in printed.out and "steep" in printed.out
    assert (cfg.paths.stats / "lr_find_head.png").is_file() and "plot:" in printed.err
