"""``prepare`` on each real source: Fashion-MNIST IDX, image folders, torchvision datasets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import small_config
from thawline.data.images import BadImageError
from thawline.data.sources import SourceError
from thawline.data.store import load_split, read_manifest
from thawline.stages import prepare


def test_fashion_mnist_small(prepared_small):
    manifest = read_manifest(prepared_small.paths.prepared)
    assert manifest["classes"][0] == "T-shirt/top" and len(manifest["classes"]) == 10
    counts = {name: split["count"] for name, split in manifest["splits"].items()}
    assert counts == {"train": 180, "val": 20, "test": 200}  # 20/class/split, val carved from train
    train = load_split(prepared_small.paths.prepared, "train")
    assert train.images.shape == (180, 3, 28, 28) and str(train.images.dtype) == "torch.uint8"
    assert (train.images[:, 0] == train.images[:, 2]).all()  # grayscale became 3 equal channels
    assert sorted(set(train.labels.tolist())) == list(range(10))
    assert all(len(h) == 64 for h in train.hashes)
    assert manifest["class_counts"]["test"]["Ankle boot"] == 20


def write_folder(root: Path, images: np.ndarray, labels: np.ndarray, classes=("a", "b", "c")):
    for i, (img, y) in enumerate(zip(images, labels, strict=True)):
        folder = root / classes[int(y) % len(classes)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:04d}.png")


def test_imagefolder_hidden_entries_empty_classes_and_modes(tmp_path, fashion_mnist_arrays):
    images, labels = fashion_mnist_arrays
    root = tmp_path / "photos"
    write_folder(root, images[:90], labels[:90])
    (root / ".ipynb_checkpoints").mkdir()
    Image.fromarray(images[0]).save(root / ".ipynb_checkpoints" / "x.png")
    (root / "a" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "a" / ".hidden.png").write_bytes(b"not read")
    (root / "empty_class").mkdir()
    (root / "notes_only").mkdir()
    (root / "notes_only" / "readme.txt").write_text("no images here")
    rgba = Image.fromarray(images[1]).convert("RGBA")
    rgba.save(root / "b" / "rgba.png")
    Image.fromarray(images[2]).convert("CMYK").save(root / "c" / "cmyk.jpg")
    Image.fromarray(images[3]).convert("P").save(root / "c" / "palette.gif")
    Image.fromarray(images[4].astype(np.uint16) * 257).save(root / "a" / "sixteen.png")
    cfg = small_config(
        tmp_path,
        data={"source": "imagefolder", "root": str(root)},
        prepare={"limit_per_class": None, "image_size": 32, "test_fraction": 0.2},
    )
    result = prepare.run(cfg, progress=False)
    manifest = read_manifest(cfg.paths.prepared)
    assert manifest["classes"] == ["a", "b", "c"]
    keys = [k for s in manifest["splits"].values() for k in s["keys"]]
    assert len(keys) == 94 and not any("/." in k or k.startswith(".") for k in keys)
    assert {"a/sixteen.png", "b/rgba.png", "c/cmyk.jpg", "c/palette.gif"} <= set(keys)
    train = load_split(cfg.paths.prepared, "train")
    assert train.images.shape[1:] == (3, 32, 32)
    assert result.metrics["test_count"] == pytest.approx(19, abs=2)


def test_imagefolder_explicit_splits_keep_one_class_map(tmp_path, fashion_mnist_arrays):
    images, labels = fashion_mnist_arrays
    for split, part in (
        ("train", slice(0, 120)),
        ("val", slice(120, 160)),
        ("test", slice(160, 200)),
    ):
        write_folder(tmp_path / "ds" / split, images[part], labels[part])
    cfg = small_config(
        tmp_path,
        data={"source": "imagefolder", "root": str(tmp_path / "ds")},
        prepare={"limit_per_class": None},
    )
    prepare.run(cfg, progress=False)
    manifest = read_manifest(cfg.paths.prepared)
    assert {n: s["count"] for n, s in manifest["splits"].items()} == {
        "train": 120,
        "val": 40,
        "test": 40,
    }
    assert all(k.startswith("val/") for k in manifest["splits"]["val"]["keys"])
    assert manifest["image_size"] == 28  # native size kept when all images share it


def test_test_class_missing_from_train_is_an_error(tmp_path, fashion_mnist_arrays):
    images, labels = fashion_mnist_arrays
    write_folder(tmp_path / "ds" / "train", images[:30], labels[:30], classes=("a", "b"))
    write_folder(tmp_path / "ds" / "test", images[30:60], labels[30:60], classes=("a", "zebra"))
    cfg = small_config(tmp_path, data={"source": "imagefolder", "root": str(tmp_path / "ds")})
    with pytest.raises(SourceError, match=r"classes \['zebra'\] are not in the train split"):
        prepare.run(cfg, progress=False)


def test_bad_images_strict_names_file_and_skip_lists_it(tmp_path, fashion_mnist_arrays):
    images, labels = fashion_mnist_arrays
    root = tmp_path / "photos"
    write_folder(root, images[:60], labels[:60])
    (root / "a" / "zero.jpg").write_bytes(b"")
    (root / "b" / "text.jpg").write_text("I am not a JPEG")
    strict = small_config(
        tmp_path,
        data={"source": "imagefolder", "root": str(root)},
        prepare={"limit_per_class": None},
    )
    with pytest.raises(BadImageError, match=r"photos/a/zero.jpg: empty file"):
        prepare.run(strict, progress=False)
    assert not (strict.paths.prepared / "manifest.json").exists()
    skip = small_config(
        tmp_path,
        data={"source": "imagefolder", "root": str(root)},
        prepare={"limit_per_class": None, "bad_images": "skip"},
    )
    result = prepare.run(skip, progress=False)
    skipped = read_manifest(skip.paths.prepared)["skipped"]
    assert result.metrics["skipped"] == 2 and len(skipped) == 2
    assert any("text.jpg: cannot decode" in s for s in skipped)


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


def test_cross_split_duplicates_reported_and_dropped(tmp_path, fashion_mnist_arrays):
    images, labels = fashion_mnist_arrays
    write_folder(tmp_path / "ds" / "train", images[:60], labels[:60])
    write_folder(tmp_path / "ds" / "test", images[60:90], labels[60:90])
    leaked = tmp_path / "ds" / "test" / "a" / "leak.png"
    leaked.write_bytes((tmp_path / "ds" / "train" / "a" / "0000.png").read_bytes())
    for policy, train_count in (("report", 60), ("drop", 59)):
        cfg = small_config(
            tmp_path / policy,
            data={"source": "imagefolder", "root": str(tmp_path / "ds")},
            prepare={"limit_per_class": None, "duplicates": policy, "val_fraction": 0},
        )
        result = prepare.run(cfg, progress=False)
        manifest = read_manifest(cfg.paths.prepared)
        assert result.metrics["duplicates"] == 1
        assert sorted(manifest["duplicates"]["examples"][0]) == [
            "test/a/leak.png",
            "train/a/0000.png",
        ]
        assert manifest["splits"]["train"]["count"] == train_count
        assert manifest["splits"]["test"]["count"] == 31


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
