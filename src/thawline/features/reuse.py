"""Feature rows of unchanged images, reused when the data changes.

Every shard stores the sha256 of each row's image (``hashes``, uint8 [n, 32]). When ``extract``
runs again with the same backbone, weights, transform, layers, dtype and precision (the *model
fingerprint*) but other data, rows whose image content is already in the old cache are copied
from it, and only new or changed images go through the backbone. The retrain flow relies on
this: adding a hundred images to 70,000 costs a hundred forward passes, not 70,000.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from thawline.features.cache import CacheError, FeatureCache, verify_shard
from thawline.files import sha256_json

log = logging.getLogger(__name__)


def model_fingerprint(parts: dict[str, Any]) -> str:
    """The fingerprint of everything that decides a row's features except the data."""
    return sha256_json({k: v for k, v in parts.items() if k != "data"})


def hashes_tensor(hashes: list[str]) -> torch.Tensor:
    """Hex sha256 strings as a uint8 [n, 32] tensor (the ``hashes`` entry of a shard)."""
    raw = b"".join(bytes.fromhex(h) for h in hashes)
    return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8).copy()).reshape(-1, 32)


class FeatureBank:
    """Cached feature rows by image sha256, read from an earlier cache of the same model."""

    def __init__(self, rows: dict[str, torch.Tensor] | None = None):
        self.rows = rows or {}

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, image_sha256: str) -> torch.Tensor | None:
        return self.rows.get(image_sha256)

    @classmethod
    def read(cls, folder: Path, fingerprint: str, wanted: set[str] | None = None) -> FeatureBank:
        """The rows of the cache in ``folder`` if it was made by the model ``fingerprint``.

        ``wanted``: keep only these images' rows (a rank keeps those of its own shards, so
        memory does not grow with the whole dataset on every rank).

        Must run before this extraction writes anything there. Shards that fail their sha256
        (damaged, or already overwritten by a killed run) are left out: they are recomputed.
        """
        try:
            cache = FeatureCache(folder)
            if cache.model_fingerprint != fingerprint:
                return cls()
            shards = cache.shards()
        except CacheError:
            return cls()
        rows: dict[str, torch.Tensor] = {}
        for path, expected in shards:
            try:
                verify_shard(path, expected)
            except CacheError as err:
                log.info("not reusing %s: %s", path.name, err)
                continue
            with safe_open(str(path), framework="pt") as f:
                if "hashes" not in f.keys():  # noqa: SIM118 - safe_open has no __contains__
                    continue
                hashes, features = f.get_tensor("hashes"), f.get_tensor("features")
            for digest, row in zip(hashes.numpy(), features, strict=True):
                key = digest.tobytes().hex()
                if wanted is None or key in wanted:
                    rows[key] = row
        return cls(rows)
