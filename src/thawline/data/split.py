"""Subsampling, stratified splits and cross-split duplicate detection (pure functions)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

SPLIT_PRIORITY = {"test": 0, "val": 1, "train": 2}  # duplicates are kept in the earlier split


def limit_per_class(
    labels: list[int], groups: list[str | None], limit: int | None, seed: int
) -> list[int]:
    """Indices keeping at most ``limit`` items per (group, class), chosen by ``seed``."""
    if limit is None:
        return list(range(len(labels)))
    rng = np.random.default_rng(seed)
    buckets: dict[tuple, list[int]] = defaultdict(list)
    for i, key in enumerate(zip(groups, labels, strict=True)):
        buckets[key].append(i)
    keep = [i for b in buckets.values() for i in rng.permutation(b)[:limit].tolist()]
    return sorted(keep)


def assign_splits(
    labels: list[int],
    given: list[str | None],
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> list[str]:
    """Give every item a split, keeping the source's own splits and carving the missing ones.

    The test split is carved from unassigned items only when the source has none; the val split is
    carved from the training pool. Both carvings are stratified by class and fixed by ``seed``.
    """
    splits = [g if g in ("train", "val", "test") else "train" for g in given]
    rng = np.random.default_rng(seed)
    if "test" not in given:
        _carve(splits, labels, "test", test_fraction, rng)
    if "val" not in given:
        _carve(splits, labels, "val", val_fraction, rng)
    return splits


def _carve(splits: list[str], labels: list[int], target: str, fraction: float, rng) -> None:
    """Move a stratified ``fraction`` of the current train items to ``target`` (in place)."""
    if fraction <= 0:
        return
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, (s, y) in enumerate(zip(splits, labels, strict=True)):
        if s == "train":
            by_class[y].append(i)
    for members in by_class.values():
        # Round per class, but keep at least one training item per class.
        n = min(len(members) - 1, round(len(members) * fraction))
        for i in rng.permutation(members)[: max(n, 0)]:
            splits[int(i)] = target


def cross_split_duplicates(hashes: list[str], splits: list[str]) -> list[dict]:
    """Groups of identical content (same sha256) found in more than one split."""
    where: dict[str, list[int]] = defaultdict(list)
    for i, h in enumerate(hashes):
        where[h].append(i)
    groups = []
    for digest, members in where.items():
        if len({splits[i] for i in members}) > 1:
            groups.append({"sha256": digest, "items": members})
    return groups


def indices_to_drop(groups: list[dict], splits: list[str]) -> set[int]:
    """For each duplicate group, drop the copies outside its highest-priority split."""
    drop: set[int] = set()
    for group in groups:
        keep_split = min((splits[i] for i in group["items"]), key=SPLIT_PRIORITY.__getitem__)
        drop.update(i for i in group["items"] if splits[i] != keep_split)
    return drop
