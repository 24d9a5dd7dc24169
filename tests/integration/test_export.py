"""ONNX export: onnxruntime gives PyTorch's probabilities on real images, for a timm and a
torchvision backbone, in both layouts, at any batch and image size, temperature included."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from thawline.cli import main
from thawline.data.store import load_split, read_manifest
from thawline.models.classifier import build_classifier
from thawline.models.head import Head
from thawline.models.onnx_export import (
    ExportError,
    PortableImageClassifier,
    export_onnx,
)
from thawline.models.preprocess import Preprocess
from thawline.models.storage import save_classifier
from thawline.tracking.pyfunc import classify

BACKBONES = {  # name, weights, features: the packaged Lite0, and a torchvision ResNet (no
    "timm": ("timm:tf_efficientnet_lite0", "packaged", 1280),  # weights offline: random init)
    "torchvision": ("torchvision:resnet18", "none", 512),
}


def classifier(kind: str, classes: list[str], size: int = 48, temperature: float = 1.0):
    name, weights, width = BACKBONES[kind]
    torch.manual_seed(0)
    head = Head(width, len(classes))
    model = build_classifier(name, weights, [], Preprocess(size, 0.875, "bicubic", (0.5,) * 3,
                             (0.25,) * 3), head, classes, 28)  # fmt: skip
    if temperature != 1.0:
        model.spec["temperature"] = temperature
    return model.eval()


@pytest.fixture(scope="module")
def real_images(prepared_small):
    """A few hundred real Fashion-MNIST images (uint8 [N, 3, 28, 28]) and the class names."""
    train = load_split(prepared_small.paths.prepared, "train")
    test = load_split(prepared_small.paths.prepared, "test")
    return torch.cat([test.images, train.images]), read_manifest(prepared_small.paths.prepared)[
        "classes"
    ]


def session(path):
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("kind", ["timm", "torchvision"])
def test_onnxruntime_matches_pytorch_on_real_images(kind, real_images, tmp_path):
    images, classes = real_images
    assert len(images) >= 300
    model = classifier(kind, classes, temperature=1.7)
    done = export_onnx(model, tmp_path / "model.onnx", list(images[:8]))
    assert done.inputs == ["pixels"] and done.opset == 18 and done.max_abs_difference <= 1e-4
    got = session(done.path).run(None, {"pixels": images.permute(0, 2, 3, 1).numpy()})[0]
    with torch.inference_mode():
        want = PortableImageClassifier(model)(images.permute(0, 2, 3, 1)).numpy()
    assert got.shape == (len(images), len(classes))
    assert np.abs(got - want).max() <= 1e-4
    assert np.array_equal(got.argmax(1), want.argmax(1))
    # thawline predict and the served model resize in uint8 (as extraction and training did),
    # the graph in float, in the same two rounded passes: a pixel may differ by a level. Even
    # this untrained head (margins of a few hundredths) mostly agrees; docs/benchmarks.md has
    # the trained default's figures.
    served = np.stack(classify(model, list(images.permute(0, 2, 3, 1).numpy()))["probabilities"])
    assert np.mean(served.argmax(1) == got.argmax(1)) >= 0.95
    assert np.abs(served - got).max() < 0.05
    # The temperature is inside the graph, and the class names and T are in the metadata.
    with torch.inference_mode():
        resized = model.preprocess.resize_float(images[:4].float())
        logits = model.network(model.preprocess.normalize(resized))
    assert np.allclose(got[:4], torch.softmax(logits, 1).numpy(), atol=1e-5)
    assert model.temperature == 1.7 and not np.allclose(
        got[:4], torch.softmax(logits * 1.7, 1).numpy(), atol=1e-3)  # fmt: skip
    meta = {p.key: p.value for p in onnx.load(str(done.path)).metadata_props}
    assert json.loads(meta["thawline.classes"]) == classes
    assert float(meta["thawline.temperature"]) == 1.7 and meta["thawline.input"] == "uint8 nhwc"


def test_dynamic_batch_and_size_and_the_nchw_layout(real_images, tmp_path):
    images, classes = real_images
    model = classifier("timm", classes)
    done = export_onnx(model, tmp_path / "nchw.onnx", list(images[:4]), layout="nchw")
    run = session(done.path)
    assert run.get_inputs()[0].shape[0] == "batch"
    bigger = torch.nn.functional.interpolate(images[:7].float(), size=56, mode="nearest")
    for batch in (images[:1], images[:7], bigger.round().to(torch.uint8)):
        got = run.run(None, {"pixels": batch.numpy()})[0]
        with torch.inference_mode():
            want = PortableImageClassifier(model, "nchw")(batch).numpy()
        assert got.shape == (len(batch), len(classes))
        assert np.abs(got - want).max() <= 1e-4


def test_bad_requests_are_refused_before_anything_is_written(real_images, tmp_path):
    images, classes = real_images
    model = classifier("timm", classes)
    with pytest.raises(ExportError, match="layout 'nwhc': use one of nhwc, nchw"):
        export_onnx(model, tmp_path / "m.onnx", list(images[:2]), layout="nwhc")
    with pytest.raises(ExportError, match="no inputs to check"):
        export_onnx(model, tmp_path / "m.onnx", [])
    assert not list(tmp_path.iterdir())
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    with pytest.raises(ExportError, match=r"a-file/m\.onnx: cannot write the ONNX file"):
        export_onnx(model, blocked / "m.onnx", list(images[:2]))


def test_thawline_export_writes_a_checked_file_from_a_model_folder(real_images, tmp_path, capsys):
    images, classes = real_images
    folder = save_classifier(classifier("torchvision", classes), tmp_path / "model")
    out = tmp_path / "exported" / "classifier.onnx"
    status = main(["export", "--model", str(folder), "--out", str(out), "-p",
                   str(tmp_path / "no-params.yaml")])  # fmt: skip
    said = capsys.readouterr().err
    assert status == 0, said
    assert f"wrote {out} (opset 18; pixels uint8 [N, S, S, 3]" in said
    assert "onnxruntime matches PyTorch on 4 synthetic images" in said
    got = session(out).run(None, {"pixels": images[:3].permute(0, 2, 3, 1).numpy()})[0]
    assert got.shape == (3, len(classes)) and np.allclose(got.sum(1), 1, atol=1e-5)


def test_thawline_export_names_a_model_that_is_not_there(tmp_path, capsys):
    status = main(["export", "--model", str(tmp_path / "nothing"), "--out", str(tmp_path / "m"),
                   "-p", str(tmp_path / "no-params.yaml")])  # fmt: skip
    said = capsys.readouterr().err
    assert status != 0 and f"{tmp_path / 'nothing'}: no such model folder" in said
    assert not (tmp_path / "m").exists()
