"""CPU inference: the registered model in PyTorch against its ONNX file in onnxruntime.

    .venv/bin/python bench/onnx_inference.py [--model models/model] [--images 2000]

After ``make run`` (which registers ``models/model`` with its ``model.onnx``), runs in one process
on the same prepared test images, one after the other (never at once):

1. PyTorch as ``thawline predict`` runs the model: fp32, ``inference_mode``, channels-last,
   the uint8 resize and normalisation of the model's own preprocessing;
2. onnxruntime on ``model.onnx`` (CPU provider, its default threads), uint8 NHWC in.

Each at batch 1 (a served request) and batch 64 (a folder), after a warm-up. Prints images/s,
the ratio, and how the two agree on the test split (accuracy, argmax agreement, probabilities).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from thawline.data.store import PreparedStore
from thawline.models.storage import MODEL_ONNX, load_classifier


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def pytorch_probs(model, images: torch.Tensor, batch: int) -> tuple[np.ndarray, float]:
    out = []
    started = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            logits = model(model.preprocess(images[i : i + batch]))
            out.append(torch.softmax(logits, 1))
    return torch.cat(out).numpy(), time.perf_counter() - started


def onnx_probs(session, pixels: np.ndarray, batch: int) -> tuple[np.ndarray, float]:
    out = []
    started = time.perf_counter()
    for i in range(0, len(pixels), batch):
        out.append(session.run(None, {"pixels": pixels[i : i + batch]})[0])
    return np.concatenate(out), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/model"))
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    parser.add_argument("--images", type=int, default=2000, help="test images timed per run")
    args = parser.parse_args()
    model = load_classifier(args.model)
    session = onnxruntime.InferenceSession(str(args.model / MODEL_ONNX),
                                           providers=["CPUExecutionProvider"])  # fmt: skip
    test = PreparedStore(args.prepared).load("test")
    images, labels = test.images, test.labels.numpy()
    pixels = images.permute(0, 2, 3, 1).contiguous().numpy()
    print(f"CPU: {cpu_model()}, {torch.get_num_threads()} torch threads; model {args.model} "
          f"({model.spec['backbone']}, input {model.preprocess.size} px, T = "
          f"{model.temperature:.3f}); torch {torch.__version__}, onnxruntime "
          f"{onnxruntime.__version__}")  # fmt: skip
    timed = slice(0, min(args.images, len(images)))
    for batch in (1, 64):
        pytorch_probs(model, images[:64], batch)  # warm-up
        onnx_probs(session, pixels[:64], batch)
        _, torch_s = pytorch_probs(model, images[timed], batch)
        _, onnx_s = onnx_probs(session, pixels[timed], batch)
        count = timed.stop
        print(f"batch {batch:>2}: PyTorch {count / torch_s:7.1f} img/s, onnxruntime "
              f"{count / onnx_s:7.1f} img/s: {torch_s / onnx_s:.2f}x")  # fmt: skip
    ours, _ = pytorch_probs(model, images, 256)
    theirs, _ = onnx_probs(session, pixels, 256)
    right = {"PyTorch": np.mean(ours.argmax(1) == labels),
             "onnxruntime": np.mean(theirs.argmax(1) == labels)}  # fmt: skip
    print(f"test split ({len(labels)} images): accuracy PyTorch {right['PyTorch']:.4f}, "
          f"onnxruntime {right['onnxruntime']:.4f}; same label on "
          f"{np.mean(ours.argmax(1) == theirs.argmax(1)):.4f}; probabilities differ by "
          f"{np.abs(ours - theirs).mean():.1e} on average, {np.abs(ours - theirs).max():.3f} at "
          "most (the graph resizes in float, PyTorch in uint8)")  # fmt: skip


if __name__ == "__main__":
    main()
