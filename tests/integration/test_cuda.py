"""The CUDA path (marked gpu: skipped where no CUDA device is present, which includes CI; run by
bench/gpu_session.sh): a fine-tune in autocast on the GPU that ends no worse than its start and
whose model scores alike on a CPU, an exact resume with deterministic kernels, and a thaw phase on
cached boundary activations built and trained on the GPU. Tiny Lite0 (random init) at 32 px."""

from __future__ import annotations

import contextlib

import pytest
import torch

from tests.finetune_support import Stop, comparable, run, same_weights
from thawline.training.validate import predict_logits

pytestmark = pytest.mark.gpu

# Half precision asked for: auto may measure fp32 faster on a GPU (precision_choice.py).
HALF = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp16"
CUDA = {"device": "cuda", "precision": HALF, "deterministic": False}
CACHED = {
    "phases": [{"groups": 2, "epochs": 2, "lr": 3e-3}, {"groups": -1, "epochs": 1, "lr": 1e-3}],
    "activation_cache": "always",
    "activation_views": 2,
}


def test_a_cuda_fine_tune_runs_in_autocast_and_its_model_scores_alike_on_a_cpu(
    finetune_data, tmp_path
):
    _, (images, _) = finetune_data
    result = run(finetune_data, tmp_path, **CUDA)
    assert result.precision == HALF
    assert result.epochs == 2 and all(torch.isfinite(torch.tensor(h["train_loss"]))
                                      for h in result.history[1:])  # fmt: skip
    # Never worse than where it started (epoch 0 is the model before any step).
    assert result.best["val_accuracy"] >= result.history[0]["val_accuracy"]
    model = result.model  # handed back on the CPU, as the stage saves it
    assert next(model.parameters()).device.type == "cpu"
    on_cpu = predict_logits(model, images)
    x = model.preprocess(images)  # the same float input on both: the network alone
    with torch.no_grad(), _no_tf32():  # CUDA's default rounds convolutions through TF32
        net_cpu = model(x)
        net_gpu = model.to("cuda")(x.to("cuda")).cpu()
        on_gpu = predict_logits(model, images)  # resized on the GPU
    torch.testing.assert_close(net_gpu, net_cpu, rtol=1e-3, atol=1e-4)
    # The GPU resizes as the CPU does, to a level (one float pass was 21 levels off at edges,
    # 0.013 in these logits), so the served model sees what it was fine-tuned on.
    torch.testing.assert_close(on_gpu, on_cpu, rtol=0, atol=5e-3)


@pytest.mark.parametrize("cache", ["never", "always"])
def test_a_cuda_run_resumes_exactly_with_deterministic_kernels(finetune_data, tmp_path, cache):
    """Live and on cached activations (the store built on the GPU): stopped after epoch 1 and
    resumed, the run repeats the uninterrupted one to the bit."""
    opts = CUDA | CACHED | {"activation_cache": cache, "deterministic": True}
    whole = run(finetune_data, tmp_path / "straight", **opts)
    assert [p["cached"] for p in whole.activation_cache] == [cache == "always", False]
    with pytest.raises(Stop):
        run(finetune_data, tmp_path / "stopped", stop_after=1, **opts)
    resumed = run(finetune_data, tmp_path / "stopped", **opts)
    assert resumed.resumed_from == 1
    assert comparable(resumed.history) == comparable(whole.history)
    same_weights(whole.model, resumed.model)


@contextlib.contextmanager
def _no_tf32():
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
