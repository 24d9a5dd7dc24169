"""The prepared store: each split's items decoded once into named tensors, with a manifest.

Layout of ``paths.prepared``::

    manifest.json        classes, per-split keys + content hashes, counts, duplicates, skipped files
    train.safetensors    the items' named tensors + labels int64 [N]; for images:
    val.safetensors      ``images`` uint8 [N, 3, S, S]; for text: ``input_ids`` int16/int32
    test.safetensors     [N, L], ``attention_mask`` uint8 [N, L], and the normalised texts
                         (``text_bytes`` uint8, UTF-8, cut at ``[text_offsets[i], [i+1])``)

Later stages never decode a source file again; they read these tensors. This module is the only
one that knows the layout and the manifest's keys: everything else asks :class:`PreparedStore`.
"""

from __future__ import annotations

import itertools
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from thawline.errors import StoreError
from thawline.files import read_json, save_tensors, sha256_file, sha256_json, write_json

SPLITS = ("train", "val", "test")
STORED_CHARS = 100_000  # text kept per document (for the TF-IDF baseline and the report)
MANIFEST = "manifest.json"


@dataclass
class SplitData:
    keys: list[str]
    hashes: list[str]
    labels: torch.Tensor  # int64 [N]
    tensors: dict[str, torch.Tensor]  # the items, by name: {"images": uint8 [N, 3, S, S]}
    texts: list[str] | None = None  # text stores: each document's normalised text

    @property
    def images(self) -> torch.Tensor:
        """The ``images`` tensor of an image store."""
        return self.tensors["images"]

    @property
    def inputs(self) -> torch.Tensor:
        """What the model takes, one row per item: images, or ids and mask ``[N, 2, L]``."""
        if "images" in self.tensors:
            return self.tensors["images"]
        ids, mask = self.tensors["input_ids"], self.tensors["attention_mask"]
        return torch.stack([ids.to(torch.int32), mask.to(torch.int32)], dim=1)


def split_fingerprint(keys: list[str], hashes: list[str], labels: list[int]) -> str:
    return sha256_json([[k, h, int(y)] for k, h, y in zip(keys, hashes, labels, strict=True)])


def write_store(folder: Path, splits: dict[str, SplitData], info: dict[str, Any]) -> dict:
    """Write every split, then the manifest: a complete manifest means a complete store."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"version": 1, **info, "splits": {}}
    for name, split in splits.items():
        labels = split.labels.tolist()
        fingerprint = split_fingerprint(split.keys, split.hashes, labels)
        texts = _packed(split.texts) if split.texts is not None else {}
        digest = save_tensors(
            folder / f"{name}.safetensors",
            {**split.tensors, **texts, "labels": split.labels},
            metadata={"split": name, "fingerprint": fingerprint},
        )
        manifest["splits"][name] = {
            "count": len(split.keys),
            "fingerprint": fingerprint,
            "file_sha256": digest,
            "keys": split.keys,
            "sha256": split.hashes,
        }
    what = {"size": info.get("image_size")} | (
        {"tokens": info["tokens"]} if "tokens" in info else {}
    )
    manifest["fingerprint"] = sha256_json(
        {n: s["fingerprint"] for n, s in manifest["splits"].items()} | what
    )
    write_json(folder / MANIFEST, manifest)
    return manifest


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise StoreError(f"{path}: no prepared data here; run 'thawline stage prepare' first")
    return read_json(path)


class PreparedStore:
    """A prepared store's manifest (read once) and its splits."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)

    @staticmethod
    def exists(folder: Path) -> bool:
        return (Path(folder) / MANIFEST).is_file()

    @property
    def fingerprint(self) -> str:
        """What the prepared data is: every split's keys, content hashes and labels, the size."""
        return self.manifest["fingerprint"]

    @property
    def source_fingerprint(self) -> str | None:
        """The source's items and contents it was made from (the retrain flow's change check)."""
        return self.manifest.get("source_fingerprint")

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def image_size(self) -> int | None:
        """The stored square size of an image store (None for text)."""
        size = self.manifest.get("image_size")
        return None if size is None else int(size)

    @property
    def modality(self) -> str:
        return self.manifest.get("modality", "image")

    @property
    def tokens(self) -> dict | None:
        """A text store's tokenizer, ``max_length``, truncation and padding id."""
        return self.manifest.get("tokens")

    @property
    def splits(self) -> list[str]:
        """The splits present, in ``SPLITS`` order."""
        return [name for name in SPLITS if name in self.manifest["splits"]]

    def count(self, split: str) -> int:
        """Items in ``split`` (0 when there is no such split)."""
        return int(self.manifest["splits"].get(split, {}).get("count", 0))

    def split_fingerprint(self, split: str) -> str:
        return self._entry(split)["fingerprint"]

    def hashes(self, split: str) -> list[str]:
        """The content sha256 of every item of ``split``, in row order."""
        return list(self._entry(split)["sha256"])

    def load(self, split: str, verify: bool = True) -> SplitData:
        return load_split(self.folder, split, verify)

    def _entry(self, split: str) -> dict[str, Any]:
        if split not in self.manifest["splits"]:
            raise StoreError(
                f"{self.folder}: no split '{split}'; have {sorted(self.manifest['splits'])}"
            )
        return self.manifest["splits"][split]


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
        names = [name for name in f.keys() if name != "labels"]  # noqa: SIM118
    tensors = {name: _mapped(path, name) for name in names}
    texts = _unpacked(tensors.pop("text_bytes"), tensors.pop("text_offsets")) if (
        "text_bytes" in tensors) else None  # fmt: skip
    return SplitData(entry["keys"], entry["sha256"], labels, tensors, texts)


def _packed(texts: list[str]) -> dict[str, torch.Tensor]:
    encoded = [t[:STORED_CHARS].encode("utf-8") for t in texts]
    offsets = np.cumsum([0, *(len(b) for b in encoded)], dtype=np.int64)
    data = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
    return {"text_bytes": torch.from_numpy(data), "text_offsets": torch.from_numpy(offsets)}


def _unpacked(data: torch.Tensor, offsets: torch.Tensor) -> list[str]:
    raw, cuts = data.numpy().tobytes(), offsets.tolist()
    return [raw[a:b].decode("utf-8") for a, b in itertools.pairwise(cuts)]


def _mapped(path: Path, name: str) -> torch.Tensor:
    """Tensor ``name`` of a split file, memory-mapped rather than read (uint8 ones).

    Pages are read when rows are used and live in the page cache, which every process on a
    machine shares: the torchrun ranks of extract (each reading only its shards' rows) and of
    finetune do not each hold a copy, and a store larger than RAM is paged from disk instead of
    failing. Copy-on-write, so nothing a process does reaches the file; thawline replaces the
    file atomically (a new inode), so a mapping never sees a half-written store.
    """
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        entry = json.loads(f.read(length))[name]
    shape = tuple(entry["shape"])
    if entry["dtype"] != "U8" or 0 in shape:  # not uint8 pixels, or empty: read it
        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor(name)
    start = 8 + length + entry["data_offsets"][0]
    array = np.memmap(path, dtype=np.uint8, mode="c", offset=start, shape=shape)
    return torch.from_numpy(array)
