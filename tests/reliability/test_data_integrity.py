"""Data that changes behind thawline's back (RELIABILITY.md 3, 4, 11): flipped bytes in a feature
shard, images rewritten in place, symlinks out of the data root, tampered manifests."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from tests.conftest import small_config, write_folder
from thawline.data.images import BadImageError
from thawline.data.store import read_manifest
from thawline.features.cache import CacheError, load_features
from thawline.stages import extract, prepare


def cached(prepared_small, tmp_path):
    """A feature cache of the shared prepared store in ``tmp_path``; its config."""
    cfg = small_config(
        tmp_path,
        paths={"prepared": str(prepared_small.paths.prepared), "features": str(tmp_path / "f")},
    )
    extract.run(cfg, progress=False)
    return cfg


def test_image_rewritten_in_place_with_same_size_and_mtime_is_noticed(
    tmp_path, fashion_mnist_arrays
):
    """DVC's state cache keys on size and mtime; thawline's manifest keys on content."""
    images, labels = fashion_mnist_arrays
    root = tmp_path / "photos"
    for i, (img, y) in enumerate(zip(images[:60], labels[:60], strict=True)):
        (root / f"c{int(y) % 3}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / f"c{int(y) % 3}" / f"{i:03d}.bmp")  # fixed file size
    cfg = small_config(
        tmp_path,
        data={"source": "imagefolder", "root": str(root)},
        prepare={"limit_per_class": None, "test_fraction": 0.2},
    )
    prepare.run(cfg, progress=False)
    before = read_manifest(cfg.paths.prepared)
    target = sorted(root.rglob("*.bmp"))[0]
    stat = target.stat()
    Image.fromarray(255 - images[0]).save(target)  # other pixels, same dimensions and format
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    after_stat = target.stat()
    assert (after_stat.st_size, after_stat.st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)

    prepare.run(cfg, progress=False)
    after = read_manifest(cfg.paths.prepared)
    assert after["fingerprint"] != before["fingerprint"]
    key = target.relative_to(root).as_posix()
    changed = [
        name
        for name, split in after["splits"].items()
        if key in split["keys"] and split["fingerprint"] != before["splits"][name]["fingerprint"]
    ]
    assert changed, "the split holding the rewritten image must get a new fingerprint"


@pytest.mark.parametrize("name", ["../train-00000.safetensors", "/etc/hostname", "x/../../y"])
def test_a_manifest_pointing_outside_the_cache_is_refused_before_any_open(
    prepared_small, tmp_path, name
):
    cfg = cached(prepared_small, tmp_path)
    path = cfg.paths.features / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["splits"]["train"]["shards"][0]["file"] = name
    path.write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match="not a plain shard name.*manifest was altered"):
        load_features(cfg.paths.features, "train")
    assert np.isfinite(load_features(cfg.paths.features, "val")[0].float().numpy()).all()


def test_flipped_byte_in_a_shard_is_refused_naming_the_file(prepared_small, tmp_path):
    cfg = cached(prepared_small, tmp_path)
    shard = cfg.paths.features / "train-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(
        CacheError,
        match=r"train-00000.safetensors: sha256 is [0-9a-f]{64}, "
        r"the manifest expects [0-9a-f]{64}",
    ):
        load_features(cfg.paths.features, "train")
    # A rerun notices the damage, recomputes that shard and the cache loads again.
    assert extract.run(cfg, progress=False).metrics["images_computed"] > 0
    load_features(cfg.paths.features, "train")


def test_symlink_leaving_the_root_is_refused(tmp_path, fashion_mnist_arrays):
    images, labels = fashion_mnist_arrays
    root = tmp_path / "photos"
    write_folder(root, images[:30], labels[:30])
    secret = tmp_path / "secret.png"
    Image.fromarray(images[0]).save(secret)
    os.symlink(secret, root / "a" / "escape.png")
    cfg = small_config(tmp_path, data={"source": "imagefolder", "root": str(root)})
    with pytest.raises(BadImageError, match="escape.png: symlink leaves the data root"):
        prepare.run(cfg, progress=False)
