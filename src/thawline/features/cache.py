"""The feature cache: sharded safetensors per split plus a manifest with a fingerprint.

Layout of ``paths.features``::

    manifest.json                  fingerprint (+ its parts), layout of the feature vector,
                                   per-split shards with row counts and sha256
    train-00000.safetensors        features [n, D] (float16 by default), labels int64 [n],
    ...                            hashes uint8 [n, 32] (each row's item sha256)

This module alone writes and reads that layout; the extract stage only orchestrates, and every
other reader asks :class:`FeatureCache`. A row is a feature vector and a label keyed by its item's
content hash: the cache does not care whether the item was an image or a document. Shard
boundaries depend only on ``extract.shard_size``, so an interrupted run resumes shard by shard,
and any number of processes produce the same files. Every shard is verified against the
manifest's sha256 before it is used. The manifest holds only what the inputs determine (no
timings, no counts of rows computed), so a resumed or repeated extraction that computes the same
rows leaves the folder, and DVC's hash of it, unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from thawline.errors import CacheError
from thawline.files import (
    read_json,
    save_tensors,
    sha256_file,
    tensor_metadata,
    tensors_sha256,
    write_json,
)

MANIFEST = "manifest.json"
_SHARD_NAME = re.compile(r"[a-z]+-\d{5,}\.safetensors")


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


# ---------------------------------------------------------------- writing


def write_shard(
    folder: Path,
    plan: ShardPlan,
    fingerprint: str,
    features: torch.Tensor,
    labels: torch.Tensor,
    hashes: torch.Tensor,
) -> str:
    """Write one shard atomically (its header: fingerprint, rows, content hash); its sha256."""
    tensors = {"features": features, "labels": labels, "hashes": hashes}
    meta = {
        "fingerprint": fingerprint,
        "split": plan.split,
        "rows": f"{plan.start}:{plan.stop}",
        "content_sha256": tensors_sha256(sorted(tensors.items())),
    }
    return save_tensors(folder / plan.filename, tensors, meta)


def shard_is_reusable(folder: Path, fingerprint: str, plan: ShardPlan) -> bool:
    """A complete, intact shard from an earlier run with the same fingerprint.

    Files appear atomically, so an existing file is complete; the content hash in its header
    catches any byte changed since it was written.
    """
    path = folder / plan.filename
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
        and meta.get("content_sha256") == tensors_sha256(sorted(tensors.items()))
    )


def write_manifest(
    folder: Path,
    *,
    parts: dict[str, Any],
    fingerprints: tuple[str, str],
    layout: list[tuple[str, int]],
    classes: list[str],
    device: str,
    splits: dict[str, tuple[int, list[ShardPlan]]],
    digests: dict[str, str],
) -> dict[str, Any]:
    """Write ``manifest.json`` (last: a complete manifest means a complete cache) and remove
    shard files it does not list; returns the manifest.

    Args:
        parts: What the features are a function of (data, backbone, weights, transform...).
        fingerprints: The hash of ``parts``, and of the parts without the data (row reuse).
        layout: ``(name, width)`` of each part of the feature vector, pre-logits first.
        splits: Each split's row count and shards.
        digests: Each shard file's sha256.
    """
    manifest = {
        "version": 1,
        "fingerprint": fingerprints[0],
        "model_fingerprint": fingerprints[1],
        "fingerprint_parts": parts,
        "num_features": sum(width for _, width in layout),
        "layout": [{"name": name, "width": width} for name, width in layout],
        "classes": classes,
        "device": device,
        "splits": {
            split: {"count": count, "shards": [
                {"file": p.filename, "rows": p.stop - p.start, "sha256": digests[p.filename]}
                for p in plans
            ]}
            for split, (count, plans) in splits.items()
        },
    }  # fmt: skip
    write_json(folder / MANIFEST, manifest)
    listed = {p.filename for _, plans in splits.values() for p in plans}
    for path in folder.glob("*.safetensors"):
        if _SHARD_NAME.fullmatch(path.name) and path.name not in listed:
            path.unlink()  # left by a larger earlier dataset: the folder holds this cache only
    return manifest


# ---------------------------------------------------------------- reading


def read_cache_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise CacheError(f"{path}: no feature cache here; run 'thawline stage extract' first")
    return read_json(path)


class FeatureCache:
    """A feature cache's manifest (read once) and its verified shards."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.manifest = read_cache_manifest(self.folder)

    fingerprint = property(lambda self: self.manifest["fingerprint"])
    model_fingerprint = property(lambda self: self.manifest.get("model_fingerprint"))
    parts = property(lambda self: self.manifest["fingerprint_parts"])
    classes = property(lambda self: list(self.manifest["classes"]))
    num_features = property(lambda self: int(self.manifest["num_features"]))
    splits = property(lambda self: list(self.manifest["splits"]))

    @property
    def layers(self) -> list[str]:
        """The hooked layers after the pre-logits, in the order of the feature vector."""
        return [part["name"] for part in self.manifest["layout"]][1:]

    @property
    def layout(self) -> list[dict[str, Any]]:
        return list(self.manifest["layout"])

    def shards(self, split: str | None = None) -> list[tuple[Path, str]]:
        """``(path, sha256)`` of every shard (of ``split``), names checked before any open."""
        chosen = [split] if split is not None else self.splits
        return [
            (shard_path(self.folder, shard["file"]), shard["sha256"])
            for name in chosen
            for shard in self.manifest["splits"][name]["shards"]
        ]

    def verify(self) -> None:
        """Raise CacheError unless every shard exists and matches its sha256."""
        for path, expected in self.shards():
            verify_shard(path, expected)

    def load(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """One split's features (cache dtype) and labels, every shard verified first.

        Raises:
            CacheError: Missing split, missing shard or sha256 mismatch.
        """
        if split not in self.manifest["splits"]:
            raise CacheError(f"{self.folder}: no split '{split}'; have {sorted(self.splits)}")
        features, labels = [], []
        for path, expected in self.shards(split):
            verify_shard(path, expected)
            with safe_open(str(path), framework="pt") as f:
                features.append(f.get_tensor("features"))
                labels.append(f.get_tensor("labels"))
        return torch.cat(features), torch.cat(labels)


def load_features(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``FeatureCache(folder).load(split)``: ``(features [N, D], labels int64 [N])``."""
    return FeatureCache(folder).load(split)


def cache_is_complete(folder: Path, fingerprint: str) -> bool:
    """Whether ``folder`` holds a cache for ``fingerprint`` whose every shard sha256 matches."""
    try:
        cache = FeatureCache(folder)
        if cache.fingerprint != fingerprint:
            return False
        cache.verify()
    except CacheError:
        return False
    return True


def shard_path(folder: Path, name: str) -> Path:
    """``folder / name`` for a shard file name from the manifest, checked before any open.

    Raises:
        CacheError: The name is not a plain shard file name (a path, ``..``, an absolute path):
            a tampered manifest must not make thawline read files outside the cache.
    """
    if not isinstance(name, str) or not _SHARD_NAME.fullmatch(name):
        raise CacheError(
            f"{folder / MANIFEST}: shard file {name!r} is not a plain shard name like "
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
