"""Interrupted work (RELIABILITY.md 1, 2, 5, 6): real SIGKILLs in the middle of extraction and of
fine-tuning, damaged checkpoints, and resumes that equal a run without a break."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests.conftest import REPO, small_config
from tests.finetune_support import Stop, comparable, run, same_weights, series
from thawline.features.cache import CacheError, load_features
from thawline.stages import extract, train_head
from thawline.training.checkpoint import (
    COMPLETE,
    CheckpointError,
    checkpoint_dirs,
    load_checkpoint,
    load_latest,
)

# Extraction whose third shard write dies half way: the process writes half of the real bytes
# to the path it was given, syncs them to disk and SIGKILLs itself, as a crash mid-write would.
KILLED_MID_WRITE = """
import os, signal, sys
import safetensors.torch as st
import thawline.files as files
written = []
def half_then_die(tensors, filename, metadata=None):
    data = st.save(tensors, metadata=metadata)
    written.append(filename)
    with open(filename, "wb") as f:
        if len(written) == 3:
            f.write(data[: len(data) // 2]); f.flush(); os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        f.write(data)
files.save_file = half_then_die
from thawline.cli import main
main(["stage", "extract", "-q", "-p", sys.argv[1]])
"""


def killed_extraction(prepared_small, tmp_path, features):
    """Run KILLED_MID_WRITE on the shared prepared store; the finished process."""
    params = tmp_path / "params.yaml"
    params.write_text(
        f"paths: {{prepared: {prepared_small.paths.prepared}, features: {features}}}\n"
        "extract: {image_size: 32, batch_size: 16, shard_size: 16, num_workers: 0}\n"
        "tracking: {enabled: false}\n"
    )
    return subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(params)], cwd=REPO)


def test_kill_mid_shard_write_never_leaves_a_partial_shard_under_its_name(prepared_small, tmp_path):
    features = tmp_path / "features"
    done = killed_extraction(prepared_small, tmp_path, features)
    assert done.returncode == -9
    shards = sorted(features.glob("*.safetensors"))
    assert len(shards) == 2, "the two shards before the killed write are complete"
    for shard in shards:  # whatever is under a final name loads and is whole
        with safe_open(str(shard), framework="pt") as f:
            assert f.get_tensor("features").shape[0] == 16
    assert not (features / "manifest.json").exists()  # nothing a later stage would trust
    cfg = small_config(
        tmp_path,
        paths={"prepared": str(prepared_small.paths.prepared), "features": str(features)},
        extract={"image_size": 32, "batch_size": 16, "shard_size": 16, "num_workers": 0},
    )
    resumed = extract.run(cfg, progress=False)
    assert resumed.metrics["images_computed"] == 400 - 2 * 16  # resumed, shard by shard
    assert not list(features.glob(".*.tmp"))
    for split in ("train", "val", "test"):
        load_features(features, split)


def test_a_stage_after_a_killed_extraction_refuses_the_partial_cache(prepared_small, tmp_path):
    """A killed stage leaves no manifest, so the next stage stops instead of training on it."""
    features = tmp_path / "features"
    killed_extraction(prepared_small, tmp_path, features)
    cfg = small_config(
        tmp_path,
        paths={"prepared": str(prepared_small.paths.prepared), "features": str(features),
               "head": str(tmp_path / "head")},
    )  # fmt: skip
    try:
        train_head.run(cfg, progress=False)
    except CacheError as err:
        assert "manifest.json" in str(err)
    else:
        raise AssertionError("train_head trained on a cache without a manifest")
    assert not (tmp_path / "head").exists()


@pytest.fixture(scope="module")
def straight(finetune_data, tmp_path_factory):
    """Two epochs (top group, then everything) without a break: what every resume must equal."""
    folder = tmp_path_factory.mktemp("straight")
    result = run(finetune_data, folder)
    assert result.checkpoints == series(folder)
    return result, folder


def test_resume_after_interruption_equals_straight_run(finetune_data, straight, tmp_path):
    whole, whole_dir = straight
    with pytest.raises(Stop):
        run(finetune_data, tmp_path, stop_after=1)
    assert [p.name for p in checkpoint_dirs(series(tmp_path))] == ["epoch-0001"]
    resumed = run(finetune_data, tmp_path)
    assert resumed.resumed_from == 1
    assert comparable(resumed.history) == comparable(whole.history)
    assert resumed.best_epoch == whole.best_epoch
    same_weights(whole.model, resumed.model)
    last = load_file(str(series(whole_dir) / "epoch-0002" / "model.safetensors"))
    again = load_file(str(series(tmp_path) / "epoch-0002" / "model.safetensors"))
    assert all(torch.equal(v, again[k]) for k, v in last.items())
    state = load_checkpoint(series(tmp_path) / "epoch-0002").state
    assert state["phase"] == 1 and state["epoch"] == 2
    assert state["unfrozen_groups"] == list(range(8))
    assert {"optimizer", "scheduler", "scaler", "rng"} <= set(state)


def test_an_lr_auto_phase_resumes_with_the_lr_it_found_without_a_second_sweep(
    finetune_data, tmp_path
):
    """One auto phase of two epochs, stopped after the first: the resumed epoch runs at the LR
    found before the stop (restored from the checkpoint, not swept again) and ends as the
    straight run does."""
    auto = {"phases": [{"groups": 2, "epochs": 2, "lr": "auto"}]}
    whole = run(finetune_data, tmp_path / "straight", **auto)
    with pytest.raises(Stop):
        run(finetune_data, tmp_path / "stopped", stop_after=1, **auto)
    resumed = run(finetune_data, tmp_path / "stopped", **auto)
    assert resumed.resumed_from == 1
    timeless = [[{k: v for k, v in f.items() if k != "seconds"} for f in r.lr_finds]
                for r in (whole, resumed)]  # fmt: skip
    assert timeless[0] == timeless[1]
    saved = load_checkpoint(series(tmp_path / "stopped") / "epoch-0001").state["lr_finds"]
    assert resumed.lr_finds == saved  # the checkpoint's, seconds and all: not swept again
    assert [f["phase"] for f in whole.lr_finds] == [1]
    assert comparable(resumed.history) == comparable(whole.history)
    assert {row["lr_head"] for row in whole.history[1:]} == {whole.lr_finds[0]["lr"]}
    same_weights(whole.model, resumed.model)


def test_with_ema_the_average_is_checkpointed_and_the_resume_is_exact(finetune_data, tmp_path):
    """finetune.ema: the averaged weights are part of every checkpoint; a run stopped after
    epoch 1 resumes to the straight run's history (the average's validation included) and
    weights."""
    whole = run(finetune_data, tmp_path / "straight", ema=True)
    with pytest.raises(Stop):
        run(finetune_data, tmp_path / "stopped", stop_after=1, ema=True)
    state = load_checkpoint(series(tmp_path / "stopped") / "epoch-0001").state
    assert state["ema"].keys() == whole.model.state_dict().keys()
    resumed = run(finetune_data, tmp_path / "stopped", ema=True)
    assert all("ema_val_accuracy" in row for row in whole.history[1:])
    assert comparable(resumed.history) == comparable(whole.history)
    assert comparable([resumed.best]) == comparable([whole.best])
    assert resumed.best["weights"] in ("raw", "ema")
    same_weights(whole.model, resumed.model)


def test_finished_run_resumes_to_its_result_and_other_settings_start_afresh(
    finetune_data, straight, tmp_path
):
    whole, _ = straight
    folder = tmp_path / "checkpoints"
    shutil.copytree(whole.checkpoints, folder / whole.checkpoints.name)
    again = run(finetune_data, folder)  # every epoch is checkpointed: nothing left to train
    assert again.resumed_from == 2 and again.history == whole.history
    same_weights(whole.model, again.model)
    # Other params (as after `dvc exp run -S ...`) are another plan: a new series from epoch 0;
    # once it finishes, the old plan's checkpoints are removed.
    other = run(finetune_data, folder, batch_size=48)
    assert other.resumed_from == 0 and other.checkpoints.name != whole.checkpoints.name
    assert series(folder) == other.checkpoints


# Fine-tuning that SIGKILLs itself right after the first epoch's checkpoint.
KILLED_FINETUNE = """
import os, signal, sys
from pathlib import Path
from tests.finetune_support import run, tiny_data
kill = lambda epoch, metrics: epoch and os.kill(os.getpid(), signal.SIGKILL)  # not at epoch 0
run(tiny_data(Path(sys.argv[1])), Path(sys.argv[2]), on_epoch_end=kill)
"""


def test_resume_after_sigkill_equals_straight_run(
    finetune_data, straight, prepared_small, tmp_path
):
    """A real SIGKILL right after the first checkpoint, then a resume in this process."""
    prepared = str(prepared_small.paths.prepared)
    command = [sys.executable, "-c", KILLED_FINETUNE, prepared, str(tmp_path)]
    assert subprocess.run(command, cwd=REPO).returncode == -9
    assert [p.name for p in checkpoint_dirs(series(tmp_path))] == ["epoch-0001"]
    resumed = run(finetune_data, tmp_path)
    assert resumed.resumed_from == 1  # from the checkpoint, never a silent restart at 0
    assert comparable(resumed.history) == comparable(straight[0].history)
    same_weights(straight[0].model, resumed.model)


def test_damaged_newest_checkpoint_is_skipped_for_the_previous(straight, tmp_path, caplog):
    for path in checkpoint_dirs(straight[0].checkpoints):
        shutil.copytree(path, tmp_path / path.name)
    with open(tmp_path / "epoch-0002" / "model.safetensors", "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02")  # a flipped region: same size, other bytes
    with caplog.at_level(logging.WARNING):
        assert load_latest(tmp_path).epoch == 1
    assert "skipping checkpoint" in caplog.text and "sha256" in caplog.text
    (tmp_path / "epoch-0001" / COMPLETE).unlink()  # half-written: no completion record
    with pytest.raises(CheckpointError, match="none complete.*finetune.resume: false"):
        load_latest(tmp_path)
