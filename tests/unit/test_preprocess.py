"""The ONNX graph's float resize against the uint8 resize that extraction and training use."""

from __future__ import annotations

import pytest
import torch

from thawline.models.preprocess import Preprocess, continuous_round


def test_continuous_round_is_round_away_from_halves_and_never_jumps():
    x = torch.tensor([0.2, 0.44, 1.56, 254.9, -0.3])
    assert continuous_round(x).tolist() == x.round().tolist()
    near = torch.linspace(2.45, 2.55, 101)
    steps = continuous_round(near).diff()
    assert (steps >= 0).all() and steps.max() < 0.02  # no whole-level jump at 2.5


def test_resize_float_follows_the_uint8_two_pass_resize(fashion_mnist_arrays):
    images = torch.from_numpy(fashion_mnist_arrays[0][:100].copy())[:, None].expand(-1, 3, -1, -1)
    for interpolation in ("bicubic", "bilinear"):
        pre = Preprocess(64, 0.875, interpolation, (0.5,) * 3, (0.5,) * 3)
        uint8 = pre.resize(images.contiguous()).float()
        graph = pre.resize_float(images.float())
        one_pass = pre.resize(images.float()).clamp(0, 255)  # what the graph did before
        assert graph.shape == uint8.shape == (100, 3, 64, 64)
        assert (graph - uint8).abs().max() <= 1.0
        assert (graph - uint8).abs().mean() < 0.05
        if interpolation == "bicubic":  # ringing at sharp edges, which uint8 clips
            assert (one_pass - uint8).abs().max() > 10


@pytest.mark.gpu
def test_a_batch_resized_on_the_gpu_gets_the_cpus_pixels_to_a_level(fashion_mnist_arrays):
    images = torch.from_numpy(fashion_mnist_arrays[0][:100].copy())[:, None].expand(-1, 3, -1, -1)
    pre = Preprocess(64, 0.875, "bicubic", (0.5,) * 3, (0.5,) * 3)
    on_cpu = pre.resize(images.contiguous()).int()
    on_gpu = pre.resize(images.contiguous().cuda())
    assert on_gpu.dtype == torch.uint8 and on_gpu.device.type == "cuda"
    assert (on_gpu.cpu().int() - on_cpu).abs().max() <= 1
