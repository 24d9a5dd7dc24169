"""Fine-tuning throughput: thawline's loop against the seeds' naive loop, in one run.

    .venv/bin/python bench/finetune_speed.py [--per-class 100] [--sizes 64 128] [--batch 64]

Same model (packaged Lite0 + a linear head), same uint8 Fashion-MNIST images, same batch size.
The naive loop is written like the seeds: fp32, default memory format, every parameter
trainable, one AdamW param group. thawline's loop (``fine_tune``) is run for one epoch with all
groups unfrozen (full) with ``precision: auto`` (measured on the machine: fp32 or bf16 autocast) and
with fp32 forced, with the top 2 groups unfrozen, and with the head only, to show that phases
with frozen groups are cheaper than a full backward. Each input size is one row.

On a GPU both loops run on CUDA (the naive one as the tutorials write it: ``model.to(device)``),
the naive loop also in bf16 autocast and channels-last (thawline's memory format, and the
precision it used there before ``auto`` measured on GPUs too), and ``--profile FILE`` writes
torch.profiler's busiest operations of a short thawline epoch (CPU and CUDA time, and how
often the step waited for the GPU: ``aten::item``).
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from thawline.config import BackboneParams, FinetuneParams, config_from_dict
from thawline.data.store import load_split
from thawline.models.backbone import create_backbone
from thawline.models.classifier import build_classifier
from thawline.models.head import Head
from thawline.models.preprocess import Preprocess
from thawline.stages import prepare
from thawline.training.thaw_loop import fine_tune


def classifier(size: int, image_size: int):
    backbone = create_backbone(BackboneParams())
    preprocess = Preprocess.from_backbone(backbone, size, None)
    head = Head(backbone.num_features, 10)
    return build_classifier(
        "timm:tf_efficientnet_lite0", "packaged", [], preprocess, head, [str(i) for i in range(10)],
        image_size,
    )  # fmt: skip


DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# The naive loop's first steps are not timed: on a GPU the first calls load kernels and cuDNN
# picks algorithms (the first loop ran at half the speed of the next). thawline's epoch, which
# runs after the naive loops, includes its first steps.
WARMUP_STEPS = 3


def naive(
    images: torch.Tensor, labels: torch.Tensor, size: int, batch: int, bf16_nhwc: bool = False
) -> float:
    """Images/s of the seeds' loop: fp32, NCHW, one param group, everything trainable
    (``bf16_nhwc``: in bf16 autocast and channels-last, as thawline runs on a GPU)."""
    model = classifier(size, images.shape[-1]).train().to(DEVICE)
    if bf16_nhwc:
        model = model.to(memory_format=torch.channels_last)
    amp = torch.autocast(DEVICE.type, torch.bfloat16) if bf16_nhwc else contextlib.nullcontext()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    steps = len(labels) // batch
    warmup = WARMUP_STEPS if steps > 2 * WARMUP_STEPS else 0  # a dry run's few steps: all timed
    started = time.perf_counter()
    for step in range(steps):
        if step == warmup:  # start the clock after first-call setup (oneDNN, cuDNN)
            if DEVICE.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        x = model.preprocess(images[step * batch : (step + 1) * batch].to(DEVICE))
        y = labels[step * batch : (step + 1) * batch].to(DEVICE)
        with amp:
            loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    return (steps - warmup) * batch / (time.perf_counter() - started)


def profile_epoch(images, labels, size: int, batch: int, tmp: Path, path: Path) -> None:
    """torch.profiler over one short full-thaw epoch of thawline's loop (``--profile``)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE.type == "cuda"
                                           else [])  # fmt: skip
    with profile(activities=activities) as prof:
        thawline_loop(images, labels, size, batch, -1, tmp / "profiled")
    averages = prof.key_averages()
    tables = [averages.table(sort_by="self_cpu_time_total", row_limit=25)]
    if DEVICE.type == "cuda":
        tables.append(averages.table(sort_by="self_cuda_time_total", row_limit=25))
    path.write_text("\n\n".join(tables))
    print(f"wrote {path}")


def thawline_loop(
    images, labels, size: int, batch: int, groups: int, tmp: Path, precision: str = "auto"
) -> tuple[float, str]:
    """Images/s of one epoch of thawline's loop, and the precision it ran in."""
    opts = FinetuneParams(
        strategy="custom", phases=[{"groups": groups, "epochs": 1, "lr": 1e-4}],
        batch_size=batch, resume=False, augment=True, precision=precision,
    )  # fmt: skip
    model = classifier(size, images.shape[-1])
    result = fine_tune(model, (images, labels), None, opts, 0, checkpoint_dir=tmp / f"c{groups}")
    return result.history[-1]["images_per_second"], result.precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--profile", type=Path, help="also profile a short thawline epoch here")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        cfg = config_from_dict({
            "paths": {"prepared": str(tmp / "p")},
            "prepare": {"limit_per_class": args.per_class, "val_fraction": 0.0},
        })  # fmt: skip
        prepare.run(cfg, progress=False)
        train = load_split(cfg.paths.prepared, "train")
        images, labels = train.images, train.labels
        for size in args.sizes:
            if DEVICE.type == "cuda":  # thawline's precision and memory format, in the naive loop
                amp = naive(images, labels, size, args.batch, bf16_nhwc=True)
                print(f"{size} px: naive loop in bf16 autocast, channels-last: {amp:.1f} img/s")
            slow = naive(images, labels, size, args.batch)
            full, auto = thawline_loop(images, labels, size, args.batch, -1, tmp)
            full32, _ = thawline_loop(images, labels, size, args.batch, -1, tmp, "fp32")
            top2, _ = thawline_loop(images, labels, size, args.batch, 2, tmp)
            head, _ = thawline_loop(images, labels, size, args.batch, 0, tmp)
            rows.append((size, auto, slow, full, full32, top2, head))
        if args.profile:
            profile_epoch(images[: 8 * args.batch], labels[: 8 * args.batch], args.sizes[0],
                          args.batch, tmp, args.profile)  # fmt: skip
    where = torch.cuda.get_device_name() if DEVICE.type == "cuda" else "CPU"
    print(f"{len(labels)} images, batch {args.batch}, {where}, {torch.get_num_threads()} threads;"
          " img/s")  # fmt: skip
    print("size | auto | naive (fp32, NCHW, all trainable) | thawline full (auto) | ratio "
          "(target >= 1.4x) | thawline full fp32 | top 2 groups | head only")  # fmt: skip
    for size, auto, slow, full, full32, top2, head in rows:
        print(f"{size:4d} | {auto} | {slow:7.1f} | {full:7.1f} | {full / slow:5.2f}x | "
              f"{full32:7.1f} ({full32 / slow:4.2f}x) | {top2:7.1f} ({top2 / full:4.2f}x full) | "
              f"{head:7.1f} ({head / full:4.2f}x full)")  # fmt: skip


if __name__ == "__main__":
    main()
