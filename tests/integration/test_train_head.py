"""``train_head``: heads on cached features, deterministic, early stopping, sweep, NaN guard."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import small_config
from thawline.config import HeadParams
from thawline.features.cache import load_features
from thawline.models.storage import load_head
from thawline.stages import extract, train_head
from thawline.training.fit_head import NonFiniteLossError, _class_weights, fit_head


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
    # 10 classes, 179 training images at 32 px, 21 val images: 9/21 on this split, so the bar
    # is "well above chance (0.1)" rather than a figure one image can move
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
    weights = _class_weights(torch.tensor([0, 0, 0, 1]), 2)
    assert weights.tolist() == pytest.approx([4 / 6, 2.0])
