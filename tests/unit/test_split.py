"""Carved splits are a function of each image's content and the seed: adding images never moves
an existing one between splits (the gate can then always pair a champion with a challenger)."""

from __future__ import annotations

import hashlib

from thawline.data.split import assign_splits


def digests(n: int, start: int = 0) -> list[str]:
    return [hashlib.sha256(str(i).encode()).hexdigest() for i in range(start, start + n)]


def test_adding_items_never_moves_existing_ones_and_new_ones_follow_the_rule():
    hashes = digests(600)
    labels = [i % 3 for i in range(600)]
    before = assign_splits(labels, [None] * 600, hashes, 0.1, 0.2, seed=42)
    more = hashes + digests(300, start=600)
    after = assign_splits(labels + [i % 3 for i in range(300)], [None] * 900, more, 0.1, 0.2, 42)
    assert after[:600] == before  # not one existing item moved
    alone = assign_splits([i % 3 for i in range(300)], [None] * 300, more[600:], 0.1, 0.2, 42)
    assert after[600:] == alone  # a new item's split does not depend on the others
    for c in range(3):  # about the asked fractions, in every class
        split_of_class = [s for s, y in zip(after, labels + [i % 3 for i in range(300)],
                                             strict=True) if y == c]  # fmt: skip
        assert 0.14 < split_of_class.count("test") / 300 < 0.26
        assert 0.04 < split_of_class.count("val") / 300 < 0.14
    assert assign_splits(labels, [None] * 600, hashes, 0.1, 0.2, seed=7) != before  # the seed


def test_identical_files_share_a_split_and_every_class_keeps_a_training_item():
    hashes = digests(100)
    copies = hashes + hashes[:20]  # the first 20 files again, under other names
    splits = assign_splits([0] * 120, [None] * 120, copies, 0.1, 0.5, seed=42)
    assert splits[100:] == splits[:20] and {"train", "val", "test"} == set(splits)
    one = assign_splits([0, 1, 1], [None] * 3, digests(3), 0.0, 0.99, seed=42)
    assert one[0] == "train" and one[1:].count("train") == 1  # never a class without training
    given = assign_splits([0, 1], ["train", "test"], digests(2), 0.1, 0.2, seed=42)
    assert given[1] == "test"  # a source's own split is kept
