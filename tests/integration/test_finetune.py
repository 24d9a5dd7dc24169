"""The finetune stage end to end on tiny real Fashion-MNIST (prepare -> extract -> train_head ->
finetune). Resume, kills, damaged checkpoints and the NaN guard are in tests/reliability."""

from __future__ import annotations

import json

from tests.conftest import small_config
from thawline.data.store import load_split
from thawline.models.classifier import load_classifier
from thawline.stages import extract, finetune, train_head


def test_stage_fine_tunes_the_probe_and_saves_a_loadable_model(prepared_small, tmp_path):
    cfg = small_config(
        tmp_path,
        paths={"prepared": str(prepared_small.paths.prepared), "features": str(tmp_path / "f"),
               "head": str(tmp_path / "head"), "finetune": str(tmp_path / "finetune"),
               "checkpoints": str(tmp_path / "checkpoints")},
        head={"epochs": 5},
        finetune={"strategy": "gradual", "gradual_steps": 1, "batch_size": 32,
                  "precision": "fp32", "device": "cpu", "image_size": 32},
    )  # fmt: skip
    extract.run(cfg, progress=False)
    train_head.run(cfg, progress=False)
    seen = []
    result = finetune.run(cfg, progress=False, on_epoch_end=lambda e, m: seen.append(e))
    assert seen == [1, 2]
    assert 0 <= result.metrics["val_accuracy"] <= 1 and result.metrics["epochs"] == 2
    model = load_classifier(result.outputs["model"])
    assert model.preprocess.size == 32
    images = load_split(cfg.paths.prepared, "test").images[:4]
    assert model(images).shape == (4, 10)
    record = json.loads((cfg.paths.finetune / "record.json").read_text())
    assert record["strategy"] == "gradual" and record["trained"] and len(record["history"]) == 2
