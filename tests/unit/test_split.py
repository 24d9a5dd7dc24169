"""Carved splits are a function of each image's content and the seed: adding images never moves
an existing one between splits (the gate can then always pair a champion with a challenger)."""

from __future__ import annotations

import hashlib

from thawline.data.split import assign_splits, draw


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


def test_a_small_class_whose_draws_all_miss_still_gets_one_val_item():
    unlucky = [d for d in digests(400) if draw(42, "val", d) >= 0.1][:24]
    splits = assign_splits([0] * 24, ["train"] * 24, unlucky, 0.1, 0.0, seed=42)
    assert splits.count("val") == 1  # 0.1 x 24 rounds to 2, so the class is measured
    assert splits.index("val") == min(range(24), key=lambda i: draw(42, "val", unlucky[i]))
    tiny = assign_splits([0] * 4, ["train"] * 4, unlucky[:4], 0.1, 0.0, seed=42)
    assert tiny == ["train"] * 4  # 0.1 x 4 rounds to 0: no item is taken from training


def test_small_classes_get_val_and_additions_never_move_items_between_train_and_test():
    for n in range(2, 40, 3):  # class sizes where draws often all miss
        for start in range(0, 3000, 150):
            old = digests(n, start)
            before = assign_splits([0] * n, [None] * n, old, 0.1, 0.2, seed=42)
            pool = n - before.count("test")  # what val is carved from
            assert ("val" in before or 0.1 * pool < 0.5) and "train" in before
            new = old + digests(5, 10_000 + start)
            after = assign_splits([0] * (n + 5), [None] * (n + 5), new, 0.1, 0.2, seed=42)
            # (a class whose every draw fell in test kept one item in train, which then goes)
            kept_back = all(draw(42, "test", d) < 0.2 for d in old)
            for was, now in zip(before, after[:n], strict=True):
                assert (was == "test") == (now == "test") or kept_back  # the gate's split
                if 0.1 * pool >= 0.5:  # already large enough: val can only give items back
                    assert not (was == "train" and now == "val")
