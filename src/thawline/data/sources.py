"""Data sources for ``prepare``, whatever their items are.

A source lists its items (a key, a label and the split it came with, if any) and loads one item as
``(sha256 of its content, the item)``: an RGB image (``image_sources.py``) or a document
(``text_sources.py``). Everything after that (subsampling, splitting, duplicate checks, the
prepared store of named tensors) is source-independent and lives in ``prepare``. The content
hash is what the store, the feature cache's row reuse and the retrain flow's change check key on.
"""

from __future__ import annotations

from typing import Any, Protocol

from thawline.config import DataParams, PrepareParams
from thawline.data.image_sources import FashionMNIST, ImageFolder, TorchvisionDataset
from thawline.data.items import Item
from thawline.data.split import limit_per_class
from thawline.files import sha256_json


class Source(Protocol):
    classes: list[str]
    items: list[Item]
    problems: list[str]  # items refused while listing (e.g. symlinks escaping the root)
    in_memory: bool  # items already decoded in memory: worker processes would only add copies

    def load(self, index: int) -> tuple[str, Any]: ...

    def digest(self, index: int) -> str:
        """The item's content sha256 (as ``load`` returns it), without decoding where possible."""
        ...


def open_source(data: DataParams, prepare: PrepareParams) -> Source:
    """Open the configured source (raising :class:`SourceError` with a fix when it cannot)."""
    if data.source == "fashion-mnist":
        return FashionMNIST(data)
    if data.source == "imagefolder":
        assert data.root is not None  # checked by the config
        return ImageFolder(data.root, prepare)
    if data.source == "torchvision":
        return TorchvisionDataset(data)
    from thawline.data.text_sources import BBCNews, TableSource, TextFolder

    if data.source == "textfolder":
        assert data.root is not None
        return TextFolder(data.root, prepare)
    if data.source == "bbc-news":
        return BBCNews(prepare)
    return TableSource(data, prepare)


def chosen_items(source: Source, limit: int | None, seed: int) -> list[int]:
    """The indices ``prepare`` takes: at most ``limit`` items per (source split, class)."""
    items = source.items
    return limit_per_class([it.label for it in items], [it.split for it in items], limit, seed)


def source_fingerprint(
    source: Source, indices: list[int], known: dict[int, str] | None = None
) -> str:
    """A hash of the items' keys, labels, assigned splits and contents: any added, removed,
    relabelled or rewritten item changes it, whatever its size and mtime.

    ``known`` maps item indices to digests already computed (``prepare`` has them from
    loading), so those files are not read again.
    """
    items, known = source.items, known or {}
    return sha256_json(
        [
            [items[i].key, items[i].label, items[i].split, known.get(i) or source.digest(i)]
            for i in indices
        ]
    )
