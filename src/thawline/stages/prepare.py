"""``prepare``: read a data source once into split, hashed tensors.

Writes ``paths.prepared`` (see :mod:`thawline.data.store`): the class map, every split's keys and
content hashes, class counts, cross-split duplicates and skipped files, and the items' tensors:
decoded uint8 images, or token ids and masks (``data/text_prepare.py``).
"""

from __future__ import annotations

import logging
import os
from collections import Counter

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from thawline.config import Config, PrepareParams
from thawline.data.images import BadImageError, square_uint8
from thawline.data.sources import Source, chosen_items, open_source, source_fingerprint
from thawline.data.split import assign_splits, cross_split_duplicates, indices_to_drop
from thawline.data.store import SPLITS, SplitData, write_store
from thawline.errors import InputError
from thawline.files import remove_stale_temps
from thawline.progress import progress_bar
from thawline.stage_table import StageResult

log = logging.getLogger(__name__)
FALLBACK_SIZE = 256  # for folders of mixed sizes: enough for 224 px crops


def run(cfg: Config, *, progress: bool = True) -> StageResult:
    """Prepare the configured source into ``cfg.paths.prepared``.

    Raises:
        SourceError: The source cannot be read.
        BadImageError: A bad image under ``prepare.bad_images: strict``.
    """
    source = open_source(cfg.data, cfg.prepare)
    cfg.paths.prepared.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(cfg.paths.prepared)
    items = source.items
    chosen = chosen_items(source, cfg.prepare.limit_per_class, cfg.seed)
    texts = None
    if cfg.data.modality == "text":
        from thawline.data.text_prepare import load_documents

        tensors, texts, hashes, loaded, skipped, info = load_documents(
            source, chosen, cfg, progress
        )
    else:
        tensors, hashes, loaded, skipped, info = _load_images(source, chosen, cfg, progress)
    labels = [items[i].label for i in loaded]
    splits = assign_splits(
        labels,
        [items[i].split for i in loaded],
        hashes,
        cfg.prepare.val_fraction,
        cfg.prepare.test_fraction,
        cfg.seed,
    )
    duplicates = cross_split_duplicates(hashes, splits)
    dropped = indices_to_drop(duplicates, splits) if cfg.prepare.duplicates == "drop" else set()
    by_split = _group(loaded, splits, dropped, items, hashes, tensors, texts)
    report = _report(source, by_split, duplicates, dropped, skipped, [items[i].key for i in loaded])
    known = dict(zip(loaded, hashes, strict=True))  # only skipped files are read again
    report["source_fingerprint"] = source_fingerprint(source, chosen, known)
    manifest = write_store(cfg.paths.prepared, by_split, {**info, **report})
    _log_summary(report, info)
    counts = {f"{name}_count": float(s.labels.numel()) for name, s in by_split.items()}
    return StageResult(
        outputs={"prepared": cfg.paths.prepared},
        metrics=counts | {"duplicates": float(len(duplicates)), "skipped": float(len(skipped))},
        info={"fingerprint": manifest["fingerprint"], "classes": source.classes},
    )


class _Loading(Dataset):
    """Loads items in DataLoader workers; bad images come back as messages, not exceptions."""

    def __init__(self, source: Source, indices: list[int], size: int):
        self.source, self.indices, self.size = source, indices, size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, pos: int):
        try:
            digest, image = self.source.load(self.indices[pos])
            return pos, digest, square_uint8(image, self.size), None, _shape(image)
        except BadImageError as err:
            return pos, None, None, str(err), None


def _load_images(source: Source, chosen: list[int], cfg: Config, progress: bool):
    """Decode the chosen images at one square size: ``(tensors, hashes, loaded, skipped, info)``."""
    size = cfg.prepare.image_size or _native_size(source, chosen)
    images, hashes, loaded, skipped, shapes = _load_all(source, chosen, size, cfg.prepare, progress)
    if cfg.prepare.image_size is None and size != FALLBACK_SIZE:
        _check_one_size(shapes, size)
    return {"images": images}, hashes, loaded, skipped, {"image_size": size}


def _load_all(source: Source, chosen: list[int], size: int, opts: PrepareParams, progress: bool):
    workers = opts.num_workers
    if workers is None:  # in-memory sources gain nothing from worker processes
        workers = 0 if source.in_memory else min(4, os.cpu_count() or 1)
    loader = DataLoader(
        _Loading(source, chosen, size), batch_size=None, num_workers=workers, collate_fn=None
    )
    images = torch.empty((len(chosen), 3, size, size), dtype=torch.uint8)
    hashes: list[str | None] = [None] * len(chosen)
    skipped = list(source.problems)
    if skipped and opts.bad_images == "strict":
        raise BadImageError(f"{skipped[0]} (set prepare.bad_images: skip to exclude such files)")
    bar = progress_bar(loader, desc="prepare", unit="img", disable=not progress, mininterval=1)
    shapes: Counter = Counter()
    for pos, digest, tensor, error, shape in bar:
        if shape is not None:  # the DataLoader hands tuples back as lists
            shapes[tuple(shape)] += 1
        if error is not None:
            if opts.bad_images == "strict":
                raise BadImageError(f"{error} (set prepare.bad_images: skip to exclude such files)")
            skipped.append(error)
            continue
        images[pos], hashes[pos] = tensor, digest
    good = [p for p, h in enumerate(hashes) if h is not None]
    keep = torch.tensor(good, dtype=torch.long)
    images = images if len(good) == len(chosen) else images.index_select(0, keep)
    return images, [hashes[p] for p in good], [chosen[p] for p in good], skipped, shapes


def _shape(image) -> tuple[int, int]:
    return (image.height, image.width) if isinstance(image, Image.Image) else image.shape[:2]


def _check_one_size(shapes: Counter, size: int) -> None:
    """With ``prepare.image_size: null`` the first images chose the size; all must share it."""
    if set(shapes) <= {(size, size)}:
        return
    seen = ", ".join(f"{h}x{w}: {n}" for (h, w), n in shapes.most_common(5))
    raise InputError(
        f"prepare.image_size is null, so the first images chose {size}x{size}, but the images "
        f"differ in size ({seen}); set prepare.image_size (e.g. {FALLBACK_SIZE}) to store them "
        "all at one size"
    )


def _native_size(source: Source, chosen: list[int]) -> int:
    """The source's own size when its first images are square and equal, else FALLBACK_SIZE."""
    sizes = set()
    for i in chosen[:16]:
        try:
            image = source.load(i)[1]
        except BadImageError:
            continue
        sizes.add(_shape(image))
    if len(sizes) == 1 and (side := sizes.pop())[0] == side[1]:
        return int(side[0])
    return FALLBACK_SIZE


def _group(loaded, splits, dropped, items, hashes, tensors, texts) -> dict[str, SplitData]:
    out = {}
    for name in SPLITS:
        rows = [p for p, s in enumerate(splits) if s == name and p not in dropped]
        if not rows:
            continue
        index = torch.tensor(rows, dtype=torch.long)
        out[name] = SplitData(
            keys=[items[loaded[p]].key for p in rows],
            hashes=[hashes[p] for p in rows],
            labels=torch.tensor([items[loaded[p]].label for p in rows], dtype=torch.int64),
            tensors={name: t.index_select(0, index) for name, t in tensors.items()},
            texts=None if texts is None else [texts[p] for p in rows],
        )
    if "train" not in out or "test" not in out:
        raise InputError(f"prepare: need train and test items, got splits {sorted(out)}")
    return out


def _report(source, by_split, duplicates, dropped, skipped, keys) -> dict:
    counts = {
        name: {source.classes[c]: n for c, n in sorted(Counter(s.labels.tolist()).items())}
        for name, s in by_split.items()
    }
    # A class with one or two images lands in train only: it can never be measured.
    unmeasured = {
        name: [c for c in source.classes if c in counts["train"] and c not in counts[name]]
        for name in ("val", "test") if name in counts
    }  # fmt: skip
    report = {
        "classes": source.classes,
        "class_counts": counts,
        "duplicates": {
            "groups": len(duplicates),
            "dropped": len(dropped),
            "examples": [[keys[i] for i in g["items"]] for g in duplicates[:50]],
        },
        "skipped": skipped,
    }
    if any(unmeasured.values()):  # only then: an unchanged manifest keeps DVC's hash
        report["classes_without_examples"] = {k: v for k, v in unmeasured.items() if v}
    return report


def _log_summary(report: dict, info: dict) -> None:
    totals = {name: sum(c.values()) for name, c in report["class_counts"].items()}
    what = f"images at {info['image_size']}px" if "image_size" in info else "documents"
    log.info("prepared %s %s, %d classes", totals, what, len(report["classes"]))
    dup = report["duplicates"]
    if dup["groups"]:
        log.warning(
            "%d items appear in more than one split (leakage); dropped %d copies "
            "(prepare.duplicates). First: %s",
            dup["groups"], dup["dropped"], dup["examples"][0],
        )  # fmt: skip
    for split, missing in report.get("classes_without_examples", {}).items():
        log.warning(
            "%d class(es) have no %s examples, so %s accuracy says nothing about them: %s (too "
            "few examples; add some, or merge or drop the class)", len(missing), split, split,
            ", ".join(missing[:10]),
        )  # fmt: skip
    if report["skipped"]:
        log.warning("skipped %d bad files, listed in the manifest; first: %s",
                    len(report["skipped"]), report["skipped"][0])  # fmt: skip
