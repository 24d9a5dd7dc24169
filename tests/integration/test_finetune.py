"""Fine-tuning on tiny real Fashion-MNIST: exact resume, damaged checkpoints, the NaN guard, and
the stage end to end (prepare -> extract -> train_head -> finetune)."""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, small_config
from thawline.config import Finetune, config_from_dict
from thawline.data.store import load_split
from thawline.files import sha256_file, write_json
from thawline.models.backbone import create_backbone
from thawline.models.classifier import Classifier, load_classifier
from thawline.models.head import Head
from thawline.models.preprocess import PooledFeatures, Preprocess
from thawline.stages import extract, finetune, train_head
from thawline.training.checkpoint import (
    COMPLETE,
    STATE,
    CheckpointError,
    checkpoint_dirs,
    load_checkpoint,
    load_latest,
)
from thawline.training.finetune import fine_tune
from thawline.training.fit_head import NonFiniteLossError

OPTS = {
    "strategy": "custom",
    "phases": [{"groups": 1, "epochs": 1, "lr": 3e-3}, {"groups": -1, "epochs": 1, "lr": 1e-3}],
    "batch_size": 32,
    "precision": "fp32",
    "device": "cpu",
    "deterministic": True,
    "keep_checkpoints": 3,
}


class Stop(Exception):
    """Raised by a callback: the run dies after a checkpoint, as a killed one would."""


@pytest.fixture(scope="module")
def data(prepared_small):
    train = load_split(prepared_small.paths.prepared, "train")
    val = load_split(prepared_small.paths.prepared, "val")
    return (train.images[:96], train.labels[:96]), (val.images[:48], val.labels[:48])


def tiny_model() -> Classifier:
    """Lite0 (random init, so no weights to load) at 32 px with a linear head."""
    torch.manual_seed(1)
    backbone = create_backbone(config_from_dict({"backbone": {"weights": "none"}}).backbone)
    preprocess = Preprocess.from_backbone(backbone, 32, 1.0)
    spec = {"classes": [str(i) for i in range(10)], "image_size": 28}
    return Classifier(PooledFeatures(backbone, []), Head(1280, 10), preprocess, spec)


def run(data, folder: Path, stop_after: int | None = None, **changes):
    def on_epoch_end(epoch, _metrics):
        if epoch == stop_after:
            raise Stop

    opts = Finetune(**(OPTS | changes))
    return fine_tune(tiny_model(), *data, opts, 7, checkpoint_dir=folder, on_epoch_end=on_epoch_end)


def series(folder: Path) -> Path:
    """The one checkpoint series (plan) under a checkpoint folder."""
    (found,) = [p for p in folder.iterdir() if p.is_dir()]
    return found


def comparable(history):
    return [{k: v for k, v in h.items() if k != "images_per_second"} for h in history]


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("straight")
    result = run(data, folder)
    assert result.checkpoints == series(folder)
    return result, folder


def test_resume_after_interruption_equals_straight_run(data, straight, tmp_path):
    whole, whole_dir = straight
    with pytest.raises(Stop):
        run(data, tmp_path, stop_after=1)
    assert [p.name for p in checkpoint_dirs(series(tmp_path))] == ["epoch-0001"]
    resumed = run(data, tmp_path)
    assert resumed.resumed_from == 1
    assert comparable(resumed.history) == comparable(whole.history)
    assert resumed.best_epoch == whole.best_epoch
    for key, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    last = load_file(str(series(whole_dir) / "epoch-0002" / "model.safetensors"))
    again = load_file(str(series(tmp_path) / "epoch-0002" / "model.safetensors"))
    assert all(torch.equal(v, again[k]) for k, v in last.items())
    state = load_checkpoint(series(tmp_path) / "epoch-0002").state
    assert state["phase"] == 1 and state["epoch"] == 2
    assert state["unfrozen_groups"] == list(range(8))


def test_finished_run_resumes_to_its_result_and_other_settings_start_afresh(
    data, straight, tmp_path
):
    whole, _ = straight
    folder = tmp_path / "checkpoints"
    shutil.copytree(whole.checkpoints, folder / whole.checkpoints.name)
    again = run(data, folder)  # every epoch is checkpointed: nothing left to train
    assert again.resumed_from == 2 and again.history == whole.history
    for key, value in whole.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[key]), key
    # Other params (as after `dvc exp run -S ...`) are another plan: a new series from epoch 0;
    # once it finishes, the old plan's checkpoints are removed.
    other = run(data, folder, batch_size=48)
    assert other.resumed_from == 0 and other.checkpoints.name != whole.checkpoints.name
    assert series(folder) == other.checkpoints


KILLED_RUN = """
import os, signal, sys
from pathlib import Path
from tests.integration import test_finetune as t
from thawline.config import Finetune
from thawline.data.store import load_split
from thawline.training.finetune import fine_tune
prepared = Path(sys.argv[1])
train, val = load_split(prepared, "train"), load_split(prepared, "val")
data = (train.images[:96], train.labels[:96]), (val.images[:48], val.labels[:48])
kill = lambda epoch, metrics: os.kill(os.getpid(), signal.SIGKILL)
fine_tune(t.tiny_model(), *data, Finetune(**t.OPTS), 7, checkpoint_dir=sys.argv[2],
          on_epoch_end=kill)
"""


def test_resume_after_sigkill_equals_straight_run(data, straight, prepared_small, tmp_path):
    """A real SIGKILL right after the first checkpoint, then a resume in this process."""
    prepared = str(prepared_small.paths.prepared)
    done = subprocess.run([sys.executable, "-c", KILLED_RUN, prepared, str(tmp_path)], cwd=REPO)
    assert done.returncode == -9
    assert [p.name for p in checkpoint_dirs(series(tmp_path))] == ["epoch-0001"]
    resumed = run(data, tmp_path)
    assert resumed.resumed_from == 1
    assert comparable(resumed.history) == comparable(straight[0].history)
    for key, value in straight[0].model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_damaged_newest_checkpoint_is_skipped_for_the_previous(straight, tmp_path, caplog):
    source = straight[0].checkpoints
    for path in checkpoint_dirs(source):
        subprocess.run(["cp", "-r", str(path), str(tmp_path)], check=True)
    with open(tmp_path / "epoch-0002" / "model.safetensors", "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02")  # a flipped region: same size, other bytes
    with caplog.at_level(logging.WARNING):
        assert load_latest(tmp_path).epoch == 1
    assert "skipping checkpoint" in caplog.text and "sha256" in caplog.text
    (tmp_path / "epoch-0001" / COMPLETE).unlink()  # half-written: no completion record
    with pytest.raises(CheckpointError, match="none complete.*finetune.resume: false"):
        load_latest(tmp_path)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_checkpoint_state_loads_weights_only_and_refuses_pickled_code(straight, tmp_path):
    source = straight[0].checkpoints
    state = torch.load(source / "epoch-0002" / STATE, weights_only=True)
    assert {"optimizer", "scheduler", "rng", "history", "unfrozen_groups"} <= set(state)
    target = tmp_path / "epoch-0001"
    subprocess.run(["cp", "-r", str(source / "epoch-0002"), str(target)], check=True)
    marker = tmp_path / "pwned"
    (target / STATE).write_bytes(pickle.dumps(_Payload(str(marker))))
    record = {"epoch": 1, "sha256": {p.name: sha256_file(p) for p in target.iterdir()}}
    write_json(target / COMPLETE, {**record, "sha256": {
        k: v for k, v in record["sha256"].items() if k != COMPLETE}})  # fmt: skip
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(target)
    assert not marker.exists()


class _Payload:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_nan_stops_within_a_step_and_saves_no_non_finite_checkpoint(data, tmp_path):
    def poison(epoch, _metrics):
        model.head.net[-1].weight.data[0, 0] = float("nan")

    model = tiny_model()
    opts = Finetune(**OPTS)
    with pytest.raises(NonFiniteLossError, match="loss became nan at epoch 2, step 0"):
        fine_tune(model, *data, opts, 7, checkpoint_dir=tmp_path, on_epoch_end=poison)
    assert [p.name for p in checkpoint_dirs(series(tmp_path))] == ["epoch-0001"]
    saved = load_file(str(series(tmp_path) / "epoch-0001" / "model.safetensors"))
    assert all(v.isfinite().all() for v in saved.values() if v.is_floating_point())


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
