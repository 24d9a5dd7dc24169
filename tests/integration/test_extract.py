"""``extract``: the sharded cache, its fingerprint, reuse (whole shards and, after a data change,
single rows), recompute, and hooks."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from tests.conftest import small_config, write_folder
from thawline.config import ConfigError
from thawline.data.store import load_split
from thawline.features.cache import load_features, read_cache_manifest
from thawline.stages import extract, prepare


def with_paths(base, tmp_path, **extract_opts):
    """The shared prepared store, a fresh feature folder, and extra extract options."""
    return small_config(
        tmp_path,
        paths={"prepared": str(base.paths.prepared), "features": str(tmp_path / "features")},
        extract=extract_opts,
    )


def test_extract_writes_verified_shards(prepared_small, tmp_path):
    cfg = with_paths(prepared_small, tmp_path, shard_size=64)
    result = extract.run(cfg, progress=False)
    assert result.metrics["images_computed"] == 400
    manifest = read_cache_manifest(cfg.paths.features)
    assert [s["rows"] for s in manifest["splits"]["train"]["shards"]] == [64, 64, 50]  # 178
    features, labels = load_features(cfg.paths.features, "train")
    assert features.shape == (178, 1280) and features.dtype == torch.float16
    assert torch.isfinite(features.float()).all() and features.float().std() > 0
    assert labels.equal(load_split(prepared_small.paths.prepared, "train").labels)
    parts = manifest["fingerprint_parts"]
    assert parts["transform"]["size"] == 32 and parts["backbone"] == "timm:tf_efficientnet_lite0"


def test_same_fingerprint_reuses_changed_fingerprint_recomputes(prepared_small, tmp_path):
    cfg = with_paths(prepared_small, tmp_path)
    first = extract.run(cfg, progress=False)
    stamp = {p.name: p.stat().st_mtime_ns for p in cfg.paths.features.glob("*.safetensors")}
    again = extract.run(cfg, progress=False)
    assert again.metrics["images_computed"] == 0
    assert again.info["fingerprint"] == first.info["fingerprint"]
    assert stamp == {p.name: p.stat().st_mtime_ns for p in cfg.paths.features.glob("*.safetensors")}
    changed = with_paths(prepared_small, tmp_path, crop_pct=1.0)
    third = extract.run(changed, progress=False)
    assert third.metrics["images_computed"] == 400
    assert third.info["fingerprint"] != first.info["fingerprint"]


def test_hooked_layers_have_the_expected_width(prepared_small, tmp_path):
    cfg = with_paths(prepared_small, tmp_path, layers="auto")
    result = extract.run(cfg, progress=False)
    assert result.info["num_features"] == 1280 + 16 + 24 + 40 + 112 + 320
    layout = read_cache_manifest(cfg.paths.features)["layout"]
    assert [part["name"] for part in layout][:2] == ["pre_logits", "blocks.0"]
    features, _ = load_features(cfg.paths.features, "val")
    assert features.shape == (22, 1792)  # the val split of prepared_small
    # The hooked columns are real activations, not padding.
    assert features[:, 1280:].float().abs().sum(dim=0).gt(0).float().mean() > 0.9


def test_torchvision_resnet_feature_pyramid(prepared_small, tmp_path):
    cfg = small_config(
        tmp_path,
        paths={"prepared": str(prepared_small.paths.prepared), "features": str(tmp_path / "f")},
        backbone={"name": "torchvision:resnet18", "weights": "none"},
        extract={"layers": ["layer1", "layer2", "layer3", "layer4"], "image_size": 32},
    )
    result = extract.run(cfg, progress=False)
    assert result.info["num_features"] == 512 + 64 + 128 + 256 + 512


def test_unknown_hook_layer_is_a_clear_error(prepared_small, tmp_path):
    cfg = with_paths(prepared_small, tmp_path, layers=["blocks.99"])
    with pytest.raises(ConfigError, match=r"extract.layers: \['blocks.99'\] are not modules"):
        extract.run(cfg, progress=False)


@pytest.mark.gpu
def test_cuda_extraction_agrees_with_cpu(prepared_small, tmp_path):
    cpu_cfg = with_paths(prepared_small, tmp_path / "cpu", precision="fp32", device="cpu")
    cpu = extract.run(cpu_cfg, progress=False)
    gpu = extract.run(with_paths(prepared_small, tmp_path / "gpu", device="cuda"), progress=False)
    assert gpu.info["num_features"] == cpu.info["num_features"]
    fc, _ = load_features(tmp_path / "cpu" / "features", "test")
    fg, _ = load_features(tmp_path / "gpu" / "features", "test")
    cosine = torch.nn.functional.cosine_similarity(fc.float(), fg.float()).mean()
    assert cosine > 0.98


def test_after_a_data_change_only_new_images_go_through_the_backbone(
    tmp_path, fashion_mnist_arrays
):
    images, labels = fashion_mnist_arrays
    root = tmp_path / "photos"
    write_folder(root, images[:60], labels[:60])
    cfg = small_config(tmp_path, data={"source": "imagefolder", "root": str(root)},
                       prepare={"limit_per_class": None, "test_fraction": 0.2})  # fmt: skip
    prepare.run(cfg, progress=False)
    assert extract.run(cfg, progress=False).metrics["images_computed"] == 60
    for i in range(3):
        Image.fromarray(255 - images[60 + i]).save(root / "b" / f"new-{i}.png")
    (root / "a" / "0000.png").unlink()
    prepare.run(cfg, progress=False)
    assert extract.run(cfg, progress=False).metrics["images_computed"] == 3
    # The reused rows are the features a fresh extraction computes, bit for bit.
    fresh = small_config(tmp_path / "fresh", paths={"prepared": str(cfg.paths.prepared)},
                         data={"source": "imagefolder", "root": str(root)})  # fmt: skip
    assert extract.run(fresh, progress=False).metrics["images_computed"] == 62
    for split in ("train", "val", "test"):
        reused, fresh_rows = (load_features(c.paths.features, split)[0] for c in (cfg, fresh))
        assert reused.equal(fresh_rows), split
    listed = {s["file"] for sp in read_cache_manifest(cfg.paths.features)["splits"].values()
              for s in sp["shards"]}  # fmt: skip
    assert {p.name for p in cfg.paths.features.glob("*.safetensors")} == listed
