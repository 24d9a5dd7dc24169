"""Subsampling, splits and cross-split duplicate detection (pure functions).

A carved split is a function of each item's content hash and the seed, not of the other items
(two exceptions below): adding images to a folder does not move an existing image between train
and test, so a champion is not scored on images it trained on, and new images land by the same
rule. Identical files share a hash, so carving never puts copies in two splits.

One exception keeps small classes measurable where training decisions are made: a class large
enough for a stratified split to give it a val item (val_fraction x size >= 0.5), whose draws
all missed, gets its lowest draw moved to val. The gate never scores on val, and this moves at
most one item from train to val in a class's life (when it first grows large enough); after
that the lowest draw only falls, so additions can send that item back to train, nothing more.

The other cannot be avoided by any rule that looks only at the items present: a class whose
every item drew test (a class of one item, 1 time in 10 at test_fraction 0.1) keeps its highest
draw in train, since a class needs a training item to be learnt at all. When that class gains an
item that draws train, the kept one goes to test, as its draw says: only classes that were
this small are affected, and the guide says so.
"""

from __future__ import annotations

import hashlib
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
    hashes: list[str],
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> list[str]:
    """Give every item a split, keeping the source's own splits and carving the missing ones.

    The test split is carved from unassigned items only when the source has none; the val split
    is carved from the training pool. An item goes to a carved split when a number drawn from its
    content hash and ``seed`` falls below the fraction (:func:`draw`), so each class contributes
    the fraction on average; every class keeps at least one training item, and one whose val
    share rounds to at least one item (val_fraction x size >= 0.5) gets at least one.
    """
    splits = [g if g in ("train", "val", "test") else "train" for g in given]
    if "test" not in given:
        _carve(splits, labels, hashes, "test", test_fraction, seed)
    if "val" not in given:
        _carve(splits, labels, hashes, "val", val_fraction, seed)
    return splits


def draw(seed: int, target: str, digest: str) -> float:
    """A number in [0, 1) fixed by the seed, the split being carved and the content hash."""
    h = hashlib.sha256(f"{seed}:{target}:{digest}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def _carve(splits, labels, hashes, target: str, fraction: float, seed: int) -> None:
    """Move each train item whose draw falls below ``fraction`` to ``target`` (in place)."""
    if fraction <= 0:
        return
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, (s, y) in enumerate(zip(splits, labels, strict=True)):
        if s == "train":
            by_class[y].append(i)
    for members in by_class.values():
        draws = {i: draw(seed, target, hashes[i]) for i in members}
        moved = [i for i in members if draws[i] < fraction]
        if len(moved) == len(members):  # a class needs one training item to be learnt at all
            moved.remove(max(moved, key=draws.__getitem__))
        elif target == "val" and not moved and len(members) >= 2 and fraction * len(members) >= 0.5:
            # Unlucky draws would leave the class out of every val decision (about 8 % of 24-item
            # classes at 0.1): its lowest draw goes instead. Never for test (module docstring).
            moved = [min(members, key=draws.__getitem__)]
        for i in moved:
            splits[i] = target


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
