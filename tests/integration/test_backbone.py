"""Backbones: packaged weights mapped right, one interface for timm and torchvision."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from skimage import data as skdata
from timm.data import create_transform

from thawline.config import BackboneParams
from thawline.models.backbone import create_backbone, weights_sha256
from thawline.models.weights import WeightsError


@pytest.fixture(scope="module")
def lite0():
    return create_backbone(BackboneParams()).eval()


def top1(backbone, name: str) -> int:
    transform = create_transform(**backbone.data_config)
    image = Image.fromarray(getattr(skdata, name)())
    with torch.no_grad():
        return int(backbone(transform(image).unsqueeze(0)).argmax())


def test_packaged_lite0_recognises_real_photos(lite0):
    assert 281 <= top1(lite0, "chelsea") <= 285  # a cat class
    assert top1(lite0, "coffee") in (967, 968)  # espresso or cup


def test_preprocessing_comes_from_the_weights(lite0):
    cfg = lite0.data_config
    assert cfg["input_size"] == (3, 224, 224)
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["interpolation"] == "bicubic"
    assert cfg["crop_pct"] == 0.875


def test_timm_interface_groups_and_hooks(lite0):
    groups = lite0.layer_groups()
    assert groups[0][0] == "conv_stem.weight" and "bn2.bias" in groups[-1]
    flat = [n for g in groups for n in g]
    assert len(flat) == len(set(flat))
    assert not any(n.startswith("classifier") for n in flat)
    assert set(flat) == {n for n, _ in lite0.model.named_parameters()} - {
        "classifier.weight",
        "classifier.bias",
    }
    assert lite0.feature_layers() == ["blocks.0", "blocks.1", "blocks.2", "blocks.4", "blocks.6"]
    with torch.no_grad():
        assert lite0.forward_features(torch.zeros(2, 3, 64, 64)).shape == (2, 1280)


@pytest.mark.parametrize(
    ("name", "width", "n_groups", "hooks"),
    [
        ("resnet18", 512, 5, ["layer1", "layer2", "layer3", "layer4"]),
        ("mobilenet_v3_small", 1024, 14, None),
        ("densenet121", 1024, 5, None),
        ("vgg11", 4096, 6, None),
        ("efficientnet_b0", 1280, 9, None),
        ("convnext_tiny", 768, 9, None),
    ],
)
def test_torchvision_adapters(name, width, n_groups, hooks):
    backbone = create_backbone(BackboneParams(name=f"torchvision:{name}", weights="none"))
    assert backbone.num_features == width
    groups = backbone.layer_groups()
    assert len(groups) == n_groups
    flat = [n for g in groups for n in g]
    assert set(flat) == {n for n, _ in backbone.model.named_parameters()}  # every param grouped
    if hooks:
        assert backbone.feature_layers() == hooks
    with torch.no_grad():
        x = torch.zeros(1, 3, 64, 64)
        assert backbone.eval().forward_features(x).shape == (1, width)
        assert backbone(x).shape == (1, 1000)
    assert backbone.data_config["mean"] == (0.485, 0.456, 0.406)


def test_local_safetensors_weights_round_trip(tmp_path):
    source = create_backbone(BackboneParams(name="torchvision:resnet18", weights="none"))
    state = {f"module.{k}": v for k, v in source.model.state_dict().items()}
    state |= {"module.fc.weight": torch.zeros(1000, 512), "module.fc.bias": torch.zeros(1000)}
    path = tmp_path / "resnet18.safetensors"
    save_file(state, str(path))
    loaded = create_backbone(BackboneParams(name="torchvision:resnet18", weights=str(path)))
    assert weights_sha256(loaded.model) == weights_sha256(source.model)


def test_weights_that_do_not_fit_name_the_keys(tmp_path):
    path = tmp_path / "wrong.safetensors"
    save_file({"conv1.weight": torch.zeros(3)}, str(path))
    with pytest.raises(WeightsError, match="does not fit the model"):
        create_backbone(BackboneParams(name="torchvision:resnet18", weights=str(path)))


def test_imagenet_weights_offline_fail_fast_with_a_fix(monkeypatch):
    monkeypatch.setattr("thawline.models.timm_adapter.hub_reachable", lambda host: False)
    with pytest.raises(WeightsError, match="backbone.weights: packaged"):
        create_backbone(BackboneParams(name="timm:resnet18", weights="imagenet"))


def test_torchvision_imagenet_weights_offline_fail_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # nothing cached
    monkeypatch.setattr("thawline.models.torchvision_adapter.hub_reachable", lambda host: False)
    with pytest.raises(WeightsError, match="download.pytorch.org is unreachable"):
        create_backbone(BackboneParams(name="torchvision:resnet18", weights="imagenet"))


def test_torchvision_vit_groups_are_patch_embedding_then_encoder_blocks():
    backbone = create_backbone(BackboneParams(name="torchvision:vit_b_16", weights="none"))
    groups = backbone.layer_groups()
    stem = ["class_token", "conv_proj.weight", "conv_proj.bias", "encoder.pos_embedding"]
    assert groups[0] == stem
    assert len(groups) == 14 and groups[-1] == ["encoder.ln.weight", "encoder.ln.bias"]
    assert backbone.feature_layers()[0] == "encoder.layers.encoder_layer_0"
    with torch.no_grad():
        assert backbone.eval().forward_features(torch.zeros(1, 3, 224, 224)).shape == (1, 768)
