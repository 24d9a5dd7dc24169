"""The feature cache: sharded safetensors per split plus a manifest with a fingerprint.

Layout of ``paths.features``::

    manifest.json                  fingerprint (+ its parts), layout of the feature vector,
                                   per-split shards with row counts and sha256
    train-00000.safetensors        features [n, D] (float16 by default), labels int64 [n]
    ...

Shard boundaries depend only on ``extract.shard_size``, so an interrupted run resumes shard by
shard, and any number of processes produce the same files. Every shard is verified against the
manifest's sha256 before it is used.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from thawline.files import read_json, sha256_file, tensor_metadata

MANIFEST = "manifest.json"
_SHARD_NAME = re.compile(r"[a-z]+-\d{5,}\.safetensors")


class CacheError(RuntimeError):
    """A feature cache that is missing, stale or corrupted; the message names the file."""


@dataclass(frozen=True)
class ShardPlan:
    split: str
    index: int
    start: int
    stop: int

    @property
    def filename(self) -> str:
        return f"{self.split}-{self.index:05d}.safetensors"


def plan_shards(split: str, rows: int, shard_size: int) -> list[ShardPlan]:
    return [
        ShardPlan(split, k, start, min(start + shard_size, rows))
        for k, start in enumerate(range(0, rows, shard_size))
    ]


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """A hash of the tensors' bytes, stored in each shard's header to check its body on reuse."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def shard_is_reusable(path: Path, fingerprint: str, plan: ShardPlan) -> bool:
    """A complete, intact shard from an earlier run with the same fingerprint.

    Files appear atomically, so an existing file is complete; the content hash in its header
    catches any byte changed since it was written.
    """
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = tensor_metadata(f)
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except Exception:  # unreadable or damaged: recompute it
        return False
    return (
        meta.get("fingerprint") == fingerprint
        and meta.get("rows") == f"{plan.start}:{plan.stop}"
        and meta.get("content_sha256") == tensors_sha256(tensors)
    )


def read_cache_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise CacheError(f"{path}: no feature cache here; run 'thawline stage extract' first")
    return read_json(path)


def cache_is_complete(folder: Path, fingerprint: str) -> bool:
    """Whether ``folder`` holds a cache for ``fingerprint`` whose every shard sha256 matches."""
    try:
        manifest = read_cache_manifest(folder)
        if manifest.get("fingerprint") != fingerprint:
            return False
        verify_shards(folder, manifest)
    except CacheError:
        return False
    return True


def remove_unlisted_shards(folder: Path, manifest: dict[str, Any]) -> None:
    """Delete shard files the manifest does not list (left by a larger earlier dataset), so the
    folder DVC versions holds exactly this cache."""
    listed = {shard["file"] for split in manifest["splits"].values() for shard in split["shards"]}
    for path in folder.glob("*.safetensors"):
        if _SHARD_NAME.fullmatch(path.name) and path.name not in listed:
            path.unlink()


def verify_shards(folder: Path, manifest: dict[str, Any]) -> None:
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            verify_shard(shard_path(folder, shard["file"]), shard["sha256"])


def shard_path(folder: Path, name: str) -> Path:
    """``folder / name`` for a shard file name from the manifest, checked before any open.

    Raises:
        CacheError: The name is not a plain shard file name (a path, ``..``, an absolute path):
            a tampered manifest must not make thawline read files outside the cache.
    """
    if not isinstance(name, str) or not _SHARD_NAME.fullmatch(name):
        raise CacheError(
            f"{folder / 'manifest.json'}: shard file {name!r} is not a plain shard name like "
            "'train-00000.safetensors'; the manifest was altered. Rerun 'thawline stage extract'"
        )
    return folder / name


def verify_shard(path: Path, expected: str) -> None:
    """Raise CacheError unless ``path`` exists and has sha256 ``expected``."""
    if not path.is_file():
        raise CacheError(f"{path}: missing feature shard; rerun 'thawline stage extract'")
    actual = sha256_file(path)
    if actual != expected:
        raise CacheError(
            f"{path}: sha256 is {actual}, the manifest expects {expected}; the shard is corrupted "
            "or was changed. Delete it and rerun 'thawline stage extract'"
        )


def load_features(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split's cached features and labels, verifying every shard's sha256.

    Returns:
        ``(features [N, D] in the cache dtype, labels int64 [N])``.

    Raises:
        CacheError: Missing split, missing shard or sha256 mismatch.
    """
    manifest = read_cache_manifest(folder)
    if split not in manifest["splits"]:
        raise CacheError(f"{folder}: no split '{split}'; have {sorted(manifest['splits'])}")
    features, labels = [], []
    for shard in manifest["splits"][split]["shards"]:
        path = shard_path(folder, shard["file"])
        verify_shard(path, shard["sha256"])
        with safe_open(str(path), framework="pt") as f:
            features.append(f.get_tensor("features"))
            labels.append(f.get_tensor("labels"))
    return torch.cat(features), torch.cat(labels)
