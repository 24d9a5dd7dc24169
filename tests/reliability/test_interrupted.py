"""Interrupted work: real SIGKILLs in the middle of writing, then a rerun."""

from __future__ import annotations

import subprocess
import sys

from safetensors import safe_open

from tests.conftest import REPO, small_config
from thawline.features.cache import CacheError, load_features
from thawline.stages import extract, train_head

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
