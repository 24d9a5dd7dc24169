"""The default pipeline's stages in one process, each timed: what they cost on this machine.

    .venv/bin/python bench/stage_times.py --out /tmp/stages -S prepare.limit_per_class=100

Every stage is its module's ``run(cfg)``, as ``thawline stage`` calls it, without the MLflow
run around it (tracking needs a store; this measures the stages alone), so it also runs where
only the training stack is installed, a lent GPU machine for one (bench/gpu_session.sh). Paths
go under ``--out``; ``-S`` overrides params.yaml as ``dvc exp run -S`` does. Prints each
stage's wall time and metrics, and writes them to ``--out``/stage_times.json.
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from pathlib import Path

import torch

from thawline.config import load_config
from thawline.precision_choice import cpu_model
from thawline.stage_table import stage

STAGES = ["prepare", "extract", "train_head", "finetune", "evaluate"]
PATHS = ("prepared", "features", "head", "model", "finetune", "scratch", "evaluation",
         "checkpoints", "stats")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the run's folder")
    parser.add_argument("--stages", nargs="+", default=STAGES, choices=STAGES)
    parser.add_argument("-S", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="a params.yaml override")  # fmt: skip
    args = parser.parse_args()
    paths = [f"paths.{name}={args.out / name}" for name in PATHS]
    cfg = load_config("params.yaml", [*paths, "tracking.enabled=false", *args.overrides])
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_model()
    print(f"{device}; torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    rows = []
    for name in args.stages:
        module = importlib.import_module(stage(name).module)
        started = time.perf_counter()
        result = module.run(cfg, progress=False)
        seconds = time.perf_counter() - started
        metrics = {k: v for k, v in result.metrics.items() if isinstance(v, int | float)}
        rows.append({"stage": name, "seconds": round(seconds, 1), "metrics": metrics})
        shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        print(f"{name:>10}: {seconds:7.1f} s  {shown}", flush=True)
    report = {"device": device, "torch": torch.__version__, "overrides": args.overrides,
              "stages": rows}  # fmt: skip
    (args.out / "stage_times.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
