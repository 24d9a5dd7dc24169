"""torchrun overhead: ``thawline stage extract|finetune`` in 1 process against N, in one run.

    .venv/bin/python bench/distributed.py [--per-class 300] [--nproc 2]

Runs the real CLI (as users do) on the same prepared Fashion-MNIST subset: extraction at 128 px
(bf16 TorchScript on a CPU) and one epoch of full fine-tuning at 64 px, first with ``--nproc 1``
and then with ``--nproc N``. Prints wall time (process start to exit, torchrun included), the
stage's own images/s, and N processes / 1 process. On a machine whose cores are all used by one
process (this 2-core CPU), N processes cannot be faster: the ratio is the cost of the
distributed path (process start, gloo collectives, the per-phase DDP wrapper). On N GPUs the
same command gives each process its own device. Also checks that the N-process feature cache
is byte-identical to the single-process one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from thawline.config import config_from_dict, dump_config
from thawline.features.cache import read_cache_manifest
from thawline.stages import prepare, train_head

VENV_BIN = Path(sys.executable).parent


def stage(params: Path, name: str, nproc: int, **paths: str) -> float:
    """Wall seconds of ``thawline stage <name> --nproc <nproc>`` with some paths changed."""
    sets = [item for key, value in paths.items() for item in ("-S", f"paths.{key}={value}")]
    command = [str(VENV_BIN / "thawline"), "stage", name, "-q", "-p", str(params),
               "--nproc", str(nproc), *sets]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(proc.stderr[-3000:])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=300, help="images per class and split")
    parser.add_argument("--nproc", type=int, default=2)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="thawline-bench-"))
    raw = {
        "paths": {
            "prepared": str(tmp / "prepared"),
            "features": str(tmp / "features-1"),
            "head": str(tmp / "head"),
        },
        "prepare": {"limit_per_class": args.per_class},
        "extract": {"image_size": 128},
        "finetune": {"strategy": "full", "image_size": 64, "batch_size": 64, "resume": False},
        "scratch": {"enabled": False},
        "tracking": {"enabled": False},
    }
    cfg = config_from_dict(raw)
    prepare.run(cfg, progress=False)
    params = tmp / "params.yaml"
    params.write_text(yaml.safe_dump(dump_config(cfg)))
    rows = {}
    for n in (1, args.nproc):
        features = str(tmp / f"features-{n}")
        wall = stage(params, "extract", n, features=features)
        manifest = read_cache_manifest(Path(features))
        rate = manifest["images_computed"] / manifest["seconds"]
        rows[f"extract, {n} process(es)"] = (wall, rate)
    one, many = tmp / "features-1", tmp / f"features-{args.nproc}"
    identical = all(
        (one / p.name).read_bytes() == p.read_bytes() for p in many.glob("*.safetensors")
    )
    train_head.run(cfg, progress=False)  # on the single-process cache
    for n in (1, args.nproc):
        folder = tmp / f"finetune-{n}"
        wall = stage(params, "finetune", n, features=str(one), finetune=str(folder),
                     checkpoints=str(tmp / f"checkpoints-{n}"))  # fmt: skip
        epoch = json.loads((folder / "record.json").read_text())["history"][0]
        rows[f"finetune 1 epoch, {n} process(es)"] = (wall, epoch["images_per_second"])

    train = json.loads((tmp / "prepared" / "manifest.json").read_text())["splits"]["train"]
    print(f"{train['count']} training images; feature cache identical: {identical}")
    print(f"{'run':34} {'wall s':>8} {'images/s':>9}")
    for name, (wall, rate) in rows.items():
        print(f"{name:34} {wall:8.1f} {rate:9.1f}")
    for what in ("extract", "finetune 1 epoch"):
        w1, r1 = rows[f"{what}, 1 process(es)"]
        wn, rn = rows[f"{what}, {args.nproc} process(es)"]
        print(f"{what}: {args.nproc} processes / 1: images/s {rn / r1:.2f}x, wall {w1 / wn:.2f}x")


if __name__ == "__main__":
    main()
