"""Bad input (RELIABILITY.md 7-10, 13): broken and hostile image files, hidden entries and empty
class folders, exotic image modes, class maps across splits, train/test duplicates.

Errors name the file; in skip mode a bad file is excluded, counted and listed in the manifest.
"""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from PIL import Image

from tests.conftest import small_config, write_folder
from thawline.data.images import BadImageError, decode_image, square_uint8
from thawline.data.store import load_split, read_manifest
from thawline.errors import InputError, SourceError
from thawline.stages import prepare


def encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def gradient(mode: str) -> Image.Image:
    base = Image.fromarray(np.tile(np.arange(0, 250, 10, dtype=np.uint8), (20, 1)))
    if mode == "I;16":
        return Image.fromarray(np.asarray(base).astype(np.uint16) * 257)
    return base.convert(mode)


# 7. Truncated, empty and mislabelled files


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"this is text, not a picture", "cannot decode image"),
        (encode(gradient("RGB"), "JPEG")[:200], "cannot decode image"),
    ],
)
def test_bad_files_name_the_path(data, reason):
    with pytest.raises(BadImageError) as err:
        decode_image(data, "cats/broken.jpg", max_pixels=10**6)
    assert str(err.value).startswith("cats/broken.jpg: ")
    assert reason in str(err.value)


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


# 8. Decompression bombs


def test_decompression_bomb_is_refused_before_decoding():
    bomb = encode(Image.new("L", (5000, 5000)), "PNG")  # tiny file, 25M pixels
    assert len(bomb) < 100_000
    with pytest.raises(BadImageError, match="exceeds prepare.max_pixels"):
        decode_image(bomb, "bomb.png", max_pixels=1_000_000)


# 9. Hidden entries, empty class folders, one class map


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


# 10. Every image mode becomes 3 x H x W


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("L", "PNG"),
        ("RGB", "JPEG"),
        ("RGBA", "PNG"),
        ("CMYK", "JPEG"),
        ("P", "PNG"),
        ("I;16", "PNG"),
        ("1", "PNG"),
        ("LA", "PNG"),
    ],
)
def test_every_mode_becomes_rgb(mode, fmt):
    img = decode_image(encode(gradient(mode), fmt), f"x.{fmt.lower()}", max_pixels=10**6)
    assert img.mode == "RGB"
    tensor = square_uint8(img, 16)
    assert tensor.shape == (3, 16, 16)
    assert tensor.dtype.is_floating_point is False
    if mode not in ("1",):  # the gradient survives: 16-bit is rescaled, not clipped to white
        assert 0 < tensor.float().mean() < 250


def test_sixteen_bit_is_rescaled_not_clipped():
    img = Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16))
    rgb = np.asarray(decode_image(encode(img), "a.png", max_pixels=10**6))
    assert abs(int(rgb[0, 0, 0]) - 128) <= 1


def test_transparent_pixels_become_white():
    img = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgb = np.asarray(decode_image(encode(img), "a.png", max_pixels=10**6))
    assert (rgb == 255).all()


# 13. The same image in train and test


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


# Silent data problems a small folder brings


def test_a_class_with_one_image_is_reported_as_unmeasured(tmp_path, fashion_mnist_arrays, caplog):
    images, labels = fashion_mnist_arrays
    root = tmp_path / "photos"
    write_folder(root, images[:60], labels[:60])
    (root / "rare").mkdir()
    Image.fromarray(images[60]).save(root / "rare" / "only.png")
    cfg = small_config(tmp_path, data={"source": "imagefolder", "root": str(root)},
                       prepare={"limit_per_class": None})  # fmt: skip
    with caplog.at_level(logging.WARNING):
        prepare.run(cfg, progress=False)
    manifest = read_manifest(cfg.paths.prepared)
    assert manifest["classes_without_examples"]["test"] == ["rare"]
    assert "have no test examples" in caplog.text and "rare" in caplog.text


def test_mixed_sizes_without_image_size_are_refused(tmp_path, fashion_mnist_arrays):
    images, labels = fashion_mnist_arrays
    root = tmp_path / "photos"
    write_folder(root, images[:60], labels[:60])  # 28x28, the first images of every class
    Image.fromarray(images[61]).resize((40, 32)).save(root / "c" / "zz_wide.png")
    cfg = small_config(tmp_path, data={"source": "imagefolder", "root": str(root)},
                       prepare={"limit_per_class": None, "image_size": None})  # fmt: skip
    with pytest.raises(InputError, match=r"images differ in size \(28x28: 60, 32x40: 1\)"):
        prepare.run(cfg, progress=False)
    assert not (cfg.paths.prepared / "manifest.json").exists()  # nothing half-written
