"""``prepare``: read a data source once into split, hashed, uint8 tensors.

Writes ``paths.prepared`` (see :mod:`thawline.data.store`): the class map, every split's keys and
content hashes, class counts, cross-split duplicates and skipped files, and the decoded images.
"""

from __future__ import annotations

import logging
import os
from collections import Counter

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from thawline.config import Config, PrepareParams
from thawline.data.images import BadImageError, square_uint8
from thawline.data.sources import Source, chosen_items, open_source, source_fingerprint
from thawline.data.split import assign_splits, cross_split_duplicates, indices_to_drop
from thawline.data.store import SPLITS, SplitData, write_store
from thawline.files import remove_stale_temps
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
    size = cfg.prepare.image_size or _native_size(source, chosen)
    images, hashes, loaded, skipped = _load_all(source, chosen, size, cfg.prepare, progress)
    labels = [items[i].label for i in loaded]
    splits = assign_splits(
        labels,
        [items[i].split for i in loaded],
        cfg.prepare.val_fraction,
        cfg.prepare.test_fraction,
        cfg.seed,
    )
    duplicates = cross_split_duplicates(hashes, splits)
    dropped = indices_to_drop(duplicates, splits) if cfg.prepare.duplicates == "drop" else set()
    by_split = _group(loaded, splits, dropped, items, hashes, images)
    report = _report(source, by_split, duplicates, dropped, skipped, [items[i].key for i in loaded])
    known = dict(zip(loaded, hashes, strict=True))  # only skipped files are read again
    report["source_fingerprint"] = source_fingerprint(source, chosen, known)
    manifest = write_store(cfg.paths.prepared, by_split, {"image_size": size, **report})
    _log_summary(report, size)
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
            return pos, digest, square_uint8(image, self.size), None
        except BadImageError as err:
            return pos, None, None, str(err)


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
    bar = tqdm(loader, desc="prepare", unit="img", disable=not progress, mininterval=1)
    for pos, digest, tensor, error in bar:
        if error is not None:
            if opts.bad_images == "strict":
                raise BadImageError(f"{error} (set prepare.bad_images: skip to exclude such files)")
            skipped.append(error)
            continue
        images[pos], hashes[pos] = tensor, digest
    good = [p for p, h in enumerate(hashes) if h is not None]
    keep = torch.tensor(good, dtype=torch.long)
    images = images if len(good) == len(chosen) else images.index_select(0, keep)
    return images, [hashes[p] for p in good], [chosen[p] for p in good], skipped


def _native_size(source: Source, chosen: list[int]) -> int:
    """The source's own size when its first images are square and equal, else FALLBACK_SIZE."""
    sizes = set()
    for i in chosen[:16]:
        try:
            image = source.load(i)[1]
        except BadImageError:
            continue
        sizes.add(
            (image.height, image.width) if isinstance(image, Image.Image) else image.shape[:2]
        )
    if len(sizes) == 1 and (side := sizes.pop())[0] == side[1]:
        return int(side[0])
    return FALLBACK_SIZE


def _group(loaded, splits, dropped, items, hashes, images) -> dict[str, SplitData]:
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
            tensors={"images": images.index_select(0, index)},
        )
    if "train" not in out or "test" not in out:
        raise BadImageError(f"prepare: need train and test images, got splits {sorted(out)}")
    return out


def _report(source, by_split, duplicates, dropped, skipped, keys) -> dict:
    counts = {
        name: {source.classes[c]: n for c, n in sorted(Counter(s.labels.tolist()).items())}
        for name, s in by_split.items()
    }
    return {
        "classes": source.classes,
        "class_counts": counts,
        "duplicates": {
            "groups": len(duplicates),
            "dropped": len(dropped),
            "examples": [[keys[i] for i in g["items"]] for g in duplicates[:50]],
        },
        "skipped": skipped,
    }


def _log_summary(report: dict, size: int) -> None:
    totals = {name: sum(c.values()) for name, c in report["class_counts"].items()}
    log.info("prepared %s images at %dpx, %d classes", totals, size, len(report["classes"]))
    dup = report["duplicates"]
    if dup["groups"]:
        log.warning(
            "%d images appear in more than one split (leakage); dropped %d copies "
            "(prepare.duplicates). First: %s",
            dup["groups"], dup["dropped"], dup["examples"][0],
        )  # fmt: skip
    if report["skipped"]:
        log.warning("skipped %d bad files, listed in the manifest; first: %s",
                    len(report["skipped"]), report["skipped"][0])  # fmt: skip
