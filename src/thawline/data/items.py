"""What every data source lists: items with a stable key, a label and the split they came with."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Item:
    key: str  # a stable name: a path relative to the root, or 'file#index'
    label: int
    split: str | None  # the split the source assigns, if any


def sha256_bytes(data: bytes) -> str:
    """An item's content hash, as the store and the feature cache key rows on."""
    return hashlib.sha256(data).hexdigest()
