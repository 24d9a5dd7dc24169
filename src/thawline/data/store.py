"""The prepared store: each split's images decoded once, as uint8 tensors, with a manifest.

Layout of ``paths.prepared``::

    manifest.json        classes, per-split keys + content hashes, counts, duplicates, skipped files
    train.safetensors    images uint8 [N, 3, S, S], labels int64 [N]
    val.safetensors
    test.safetensors

Later stages never decode an image file again; they read these tensors.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from thawline.files import read_json, save_tensors, sha256_file, sha256_json, write_json

SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"


class StoreError(RuntimeError):
    """The prepared store is missing, incomplete or altered."""


@dataclass
class SplitData:
    keys: list[str]
    hashes: list[str]
    labels: torch.Tensor  # int64 [N]
    images: torch.Tensor  # uint8 [N, 3, S, S]


def split_fingerprint(keys: list[str], hashes: list[str], labels: list[int]) -> str:
    return sha256_json([[k, h, int(y)] for k, h, y in zip(keys, hashes, labels, strict=True)])


def write_store(folder: Path, splits: dict[str, SplitData], info: dict[str, Any]) -> dict:
    """Write every split, then the manifest: a complete manifest means a complete store."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"version": 1, **info, "splits": {}}
    for name, split in splits.items():
        labels = split.labels.tolist()
        fingerprint = split_fingerprint(split.keys, split.hashes, labels)
        digest = save_tensors(
            folder / f"{name}.safetensors",
            {"images": split.images, "labels": split.labels},
            metadata={"split": name, "fingerprint": fingerprint},
        )
        manifest["splits"][name] = {
            "count": len(split.keys),
            "fingerprint": fingerprint,
            "file_sha256": digest,
            "keys": split.keys,
            "sha256": split.hashes,
        }
    manifest["fingerprint"] = sha256_json(
        {n: s["fingerprint"] for n, s in manifest["splits"].items()} | {"size": info["image_size"]}
    )
    write_json(folder / MANIFEST, manifest)
    return manifest


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise StoreError(f"{path}: no prepared data here; run 'thawline stage prepare' first")
    return read_json(path)


def load_split(folder: Path, name: str, verify: bool = True) -> SplitData:
    """Load one split's tensors, checking the file against the manifest's sha256."""
    manifest = read_manifest(folder)
    if name not in manifest["splits"]:
        raise StoreError(f"{folder}: no split '{name}'; have {sorted(manifest['splits'])}")
    entry = manifest["splits"][name]
    path = folder / f"{name}.safetensors"
    if not path.is_file():
        raise StoreError(f"{path}: missing; rerun 'thawline stage prepare'")
    if verify:
        actual = sha256_file(path)
        if actual != entry["file_sha256"]:
            raise StoreError(
                f"{path}: sha256 {actual} does not match the manifest's {entry['file_sha256']}; "
                "the file was altered, rerun 'thawline stage prepare'"
            )
    with safe_open(str(path), framework="pt") as f:
        labels = f.get_tensor("labels")
    return SplitData(entry["keys"], entry["sha256"], labels, _mapped_images(path))


def _mapped_images(path: Path) -> torch.Tensor:
    """The ``images`` tensor of a split file, memory-mapped rather than read.

    Pages are read when rows are used and live in the page cache, which every process on a
    machine shares: the torchrun ranks of extract (each reading only its shards' rows) and of
    finetune do not each hold a copy, and a store larger than RAM is paged from disk instead of
    failing. Copy-on-write, so nothing a process does reaches the file; thawline replaces the
    file atomically (a new inode), so a mapping never sees a half-written store.
    """
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        entry = json.loads(f.read(length))["images"]
    shape = tuple(entry["shape"])
    if entry["dtype"] != "U8" or 0 in shape:  # not a store written by prepare, or empty
        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor("images")
    start = 8 + length + entry["data_offsets"][0]
    array = np.memmap(path, dtype=np.uint8, mode="c", offset=start, shape=shape)
    return torch.from_numpy(array)
