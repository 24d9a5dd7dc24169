"""System faults (RELIABILITY.md 21, 23, 24, 30): a real full filesystem under extraction and a
checkpoint write, SIGTERM in the middle of extraction, two extractions at once as real
processes, and what a killed run leaves for the next one."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tests.conftest import REPO, small_config, stage_command
from thawline.errors import DiskFullError, LockedError
from thawline.features.cache import load_features
from thawline.files import remove_stale_temps
from thawline.locks import lock_path, output_lock
from thawline.stages import extract
from thawline.training.checkpoint import checkpoint_dirs, load_latest, save_checkpoint

IMAGES = 400  # prepared_small: train, val and test together
SHARD = 16


@contextlib.contextmanager
def small_disk(path: Path, size_kib: int):
    """A real tmpfs of ``size_kib`` mounted at ``path`` for the block (needs root or
    CAP_SYS_ADMIN; skipped with the reason elsewhere)."""
    path.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0755", "thawline-test", str(path)],
        capture_output=True, text=True,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip()}): needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path, leave_kib: int) -> Path:
    """A ballast file that leaves about ``leave_kib`` free on ``disk``."""
    ballast = disk / "ballast"
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with open(ballast, "wb") as f:
        f.write(b"\0" * max(free - leave_kib * 1024, 0))
    return ballast


def extract_config(prepared_small, base: Path, features: Path, **extract_changes):
    return small_config(
        base,
        paths={"prepared": str(prepared_small.paths.prepared), "features": str(features)},
        extract={"image_size": 32, "batch_size": 16, "shard_size": SHARD, "num_workers": 0}
        | extract_changes,
        tracking={"enabled": False},
    )


def whole_shards(features: Path) -> list[Path]:
    """Every shard under its final name, each loaded in full (a partial one would fail)."""
    shards = sorted(features.glob("*.safetensors"))
    for shard in shards:
        with safe_open(str(shard), framework="pt") as f:
            assert f.get_tensor("features").shape[0] >= 1
    return shards


def test_a_full_disk_during_extraction_is_one_line_and_the_rerun_reuses_the_shards(
    prepared_small, tmp_path
):
    with small_disk(tmp_path / "disk", 4096) as disk:
        features = disk / "features"
        cfg = extract_config(prepared_small, tmp_path, features)
        ballast = fill(disk, leave_kib=160)  # room for about three shards of 41 KiB
        done = subprocess.run(stage_command(cfg, tmp_path, "extract"), cwd=REPO,
                              capture_output=True, text=True)  # fmt: skip
        assert done.returncode == 1, done.stderr[-2000:]
        said = [line for line in done.stderr.splitlines() if line.startswith("thawline:")]
        assert "Traceback" not in done.stderr and len(said) == 1, done.stderr[-2000:]
        assert said[0].startswith(
            f"thawline: extract failed: disk full: could not write {features}/"
        )
        assert "free some space" in said[0] and "rerun" in said[0]
        kept = whole_shards(features)
        assert kept and not list(features.glob(".*.tmp")) and not list(disk.glob(".*.tmp"))
        assert not (features / "manifest.json").exists()  # nothing a later stage trusts
        ballast.unlink()  # space freed: the rerun completes and computes only what is missing
        result = extract.run(cfg, progress=False)
        assert result.metrics["images_computed"] == IMAGES - SHARD * len(kept)
        for split in ("train", "val", "test"):
            load_features(features, split)


def test_a_full_disk_during_a_checkpoint_keeps_the_earlier_one(tmp_path):
    torch.manual_seed(0)
    weights = {"w": torch.randn(512, 1024)}  # 2 MiB, and 2 MiB of optimizer state
    state = {"epoch": 1, "optimizer": {"m": torch.randn(512, 1024)}}
    with small_disk(tmp_path / "disk", 16384) as disk:
        folder = disk / "checkpoints"
        save_checkpoint(folder, 1, weights, state)
        ballast = fill(disk, leave_kib=1024)
        with pytest.raises(DiskFullError, match=f"disk full: could not write {folder}/epoch-0002"):
            save_checkpoint(folder, 2, {"w": weights["w"] + 1}, state)
        assert [p.name for p in checkpoint_dirs(folder)] == ["epoch-0001"]
        assert not list(folder.glob(".*")), "no half-written checkpoint is left"
        assert torch.equal(load_latest(folder).model["w"], weights["w"])
        ballast.unlink()
        save_checkpoint(folder, 2, {"w": weights["w"] + 1}, state)
        assert load_latest(folder).epoch == 2


# Extraction that receives SIGTERM while its third shard is being computed, as `kill` sends it.
SIGTERM_MID_EXTRACT = """
import os, signal, sys
import thawline.stages.extract as stage
real, calls = stage.write_shard, []
def write_after_a_signal(*args, **kwargs):
    calls.append(1)
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGTERM)
    return real(*args, **kwargs)
stage.write_shard = write_after_a_signal
from thawline.cli import main
sys.exit(main(["stage", "extract", "-q", "-p", sys.argv[1]]))
"""


def test_sigterm_during_extraction_stops_after_the_shard_in_hand(prepared_small, tmp_path):
    features = tmp_path / "features"
    cfg = extract_config(prepared_small, tmp_path, features)
    params = stage_command(cfg, tmp_path, "extract")[-1]
    done = subprocess.run([sys.executable, "-c", SIGTERM_MID_EXTRACT, params], cwd=REPO,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 128 + signal.SIGTERM, done.stderr[-2000:]
    assert re.search(r"stopped by SIGTERM: extract: 3 of 2\d shards written", done.stderr)
    assert "rerun (dvc repro, or thawline stage extract)" in done.stderr
    assert len(whole_shards(features)) == 3 and not (features / "manifest.json").exists()
    assert not list(features.glob(".*.tmp"))
    result = extract.run(cfg, progress=False)
    assert result.metrics["images_computed"] == IMAGES - 3 * SHARD


def test_two_extractions_at_once_take_turns_and_the_cache_is_whole(prepared_small, tmp_path):
    features = tmp_path / "features"
    cfg = extract_config(prepared_small, tmp_path, features)
    command = stage_command(cfg, tmp_path, "extract")
    runs = [subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]  # fmt: skip
    errors = [run.communicate(timeout=300)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], errors
    waited = [e for e in errors if "waiting for pid" in e]
    assert len(waited) == 1 and f"which is writing {features}" in waited[0], errors
    computed = sorted(float(e.split("images_computed=")[1].split(",")[0]) for e in errors)
    assert computed == [0, IMAGES]  # the second found the first's cache complete
    for split in ("train", "val", "test"):
        load_features(features, split)  # every sha256 checked
    assert not lock_path(features).exists()


def test_a_held_lock_fails_clearly_after_the_wait_and_a_dead_owner_blocks_nothing(tmp_path):
    output = tmp_path / "features"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from thawline.locks import output_lock\n"
         "with output_lock(Path(sys.argv[1]), 0, 'test'):\n"
         "    print('held', flush=True); time.sleep(60)", str(output)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        held = rf"{output} is being written by pid {holder.pid} "
        with pytest.raises(LockedError, match=held), output_lock(output, 0.5, "stage extract"):
            pass
        assert 0.5 <= time.monotonic() - started < 5
    finally:
        holder.kill()  # SIGKILL: no clean-up ran, its lock file is still there
        holder.wait()
    assert lock_path(output).exists()
    with output_lock(output, 0, "stage extract"):  # the kernel released it with its owner
        assert json.loads(lock_path(output).read_text())["pid"] == os.getpid()
    assert not lock_path(output).exists()


def test_stale_temp_files_go_only_when_their_writer_is_gone(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    left = tmp_path / f".shard.safetensors.{dead}.x1y2.tmp"
    live = tmp_path / f".shard.safetensors.{os.getppid()}.a1b2.tmp"  # pytest's parent: alive
    old = tmp_path / ".manifest.json.k3j4.tmp"  # an older version's name, without a pid
    folder = tmp_path / f".epoch-0003.{dead}.tmp"
    for path in (left, live, old):
        path.write_bytes(b"partial")
    folder.mkdir()
    remove_stale_temps(tmp_path)
    assert live.exists() and not left.exists() and not old.exists() and not folder.exists()
