"""``prepare`` on each real source: Fashion-MNIST IDX, image folders, torchvision datasets."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import small_config
from thawline.data.store import load_split, read_manifest
from thawline.errors import SourceError
from thawline.stages import prepare


def test_fashion_mnist_small(prepared_small):
    manifest = read_manifest(prepared_small.paths.prepared)
    assert manifest["classes"][0] == "T-shirt/top" and len(manifest["classes"]) == 10
    counts = {name: split["count"] for name, split in manifest["splits"].items()}
    # 20 a class and split; val is carved from train by content hash: 10% on average
    assert counts["test"] == 200 and counts["train"] + counts["val"] == 200
    assert counts == {"train": 178, "val": 22, "test": 200}  # this seed's draw, fixed
    train = load_split(prepared_small.paths.prepared, "train")
    assert train.images.shape == (178, 3, 28, 28) and str(train.images.dtype) == "torch.uint8"
    assert (train.images[:, 0] == train.images[:, 2]).all()  # grayscale became 3 equal channels
    assert sorted(set(train.labels.tolist())) == list(range(10))
    assert all(len(h) == 64 for h in train.hashes)
    assert manifest["class_counts"]["test"]["Ankle boot"] == 20


def test_torchvision_dataset_source_offline(tmp_path, torchvision_fashion_root):
    cfg = small_config(
        tmp_path,
        data={
            "source": "torchvision",
            "name": "FashionMNIST",
            "root": str(torchvision_fashion_root),
            "download": False,
        },
        prepare={"limit_per_class": 5},
    )
    prepare.run(cfg, progress=False)
    manifest = read_manifest(cfg.paths.prepared)
    assert manifest["classes"][:2] == ["T-shirt/top", "Trouser"]
    assert manifest["splits"]["test"]["count"] == 50
    # Same pixels as the IDX source: the same seed picks the same items from the same files.
    idx = small_config(tmp_path / "idx", prepare={"limit_per_class": 5})
    prepare.run(idx, progress=False)
    ours = load_split(cfg.paths.prepared, "test").images
    assert ours.equal(load_split(idx.paths.prepared, "test").images)


def test_missing_fashion_mnist_offline_is_a_clear_error(tmp_path):
    cfg = small_config(tmp_path, data={"root": str(tmp_path / "nowhere"), "download": False})
    with pytest.raises(SourceError, match="apt-get install dataset-fashion-mnist"):
        prepare.run(cfg, progress=False)


def test_split_images_are_memory_mapped_and_private(prepared_small):
    """Ranks share the page cache instead of each holding the store; writes never reach it."""
    from safetensors import safe_open

    path = prepared_small.paths.prepared / "train.safetensors"
    with safe_open(str(path), framework="pt") as f:
        stored = f.get_tensor("images")
    split = load_split(prepared_small.paths.prepared, "train")
    assert split.images.equal(stored)
    assert mapped_from(split.images.data_ptr()) == str(path.resolve())
    before = path.read_bytes()
    split.images[0] = 0  # copy-on-write: this process's page only
    assert path.read_bytes() == before
    assert load_split(prepared_small.paths.prepared, "train").images.equal(stored)


def mapped_from(address: int) -> str | None:
    """The file mapped at ``address`` in this process (Linux /proc/self/maps), if any."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        low, high = (int(x, 16) for x in fields[0].split("-"))
        if low <= address < high:
            return fields[5] if len(fields) == 6 else None
    return None
