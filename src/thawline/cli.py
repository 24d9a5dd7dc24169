"""The ``thawline`` command: a thin wrapper that loads the config and calls a stage's ``run``.

thawline stage prepare
thawline stage extract -S backbone.name=torchvision:resnet18 -S backbone.weights=imagenet
thawline stage finetune --nproc 2   # DDP under torchrun, 2 processes on this machine
thawline config            # print the validated config
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import logging
import sys
import time

from thawline import __version__
from thawline.config import ConfigError, dump_config, load_config

# The stages that run in several processes, and the params section holding their ``nproc``.
DISTRIBUTED = {"extract": "extract", "finetune": "finetune", "scratch": "finetune"}
STAGES = {
    "prepare": "decode, split and hash the data source into a uint8 store (paths.prepared)",
    "extract": "run the frozen backbone once and cache its features (paths.features)",
    "train_head": "train the classifier head on the cached features (paths.head)",
    "finetune": "thaw the backbone under the head: gradual unfreezing, per-group LRs; "
    "strategy auto picks by data size and the probe (paths.finetune)",
    "scratch": "the from-scratch baseline with the fine-tune's budget, when scratch.enabled "
    "(paths.scratch)",
    "evaluate": "score every trained model on the pinned test split; the best by validation "
    "accuracy gets the full metrics, plots and predictions (paths.evaluation)",
    "register": "log the complete model to MLflow; move 'champion' only through the gate",
}
# Errors whose message already says what is wrong and what to do: no traceback for these.
USER_ERRORS = (
    "ConfigError",
    "SourceError",
    "BadImageError",
    "StoreError",
    "CacheError",
    "WeightsError",
    "NonFiniteLossError",
    "StageError",
    "TransientStageError",
    "EvaluationError",
    "CheckpointError",
    "RegistryError",
    "MlflowException",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="thawline",
        description="Transfer learning that freezes, caches and thaws. Stages read params.yaml; "
        "dvc.yaml runs them in order (dvc repro).",
    )
    parser.add_argument("--version", action="version", version=f"thawline {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-p", "--params", default="params.yaml", help="params file (default: params.yaml)"
    )
    common.add_argument(
        "-S",
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a param, e.g. -S extract.batch_size=16 (repeatable, validated)",
    )
    stage = sub.add_parser(
        "stage",
        parents=[common],
        help="run one pipeline stage",
        description="Run one stage. Stages: "
        + "; ".join(f"{name}: {text}" for name, text in STAGES.items()),
    )
    stage.add_argument("name", choices=list(STAGES), help="the stage to run")
    stage.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    stage.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="run in N processes on this machine under torchrun (extract: ranks split the "
        "shards; finetune, scratch: DistributedDataParallel, gloo on CPU, nccl on CUDA). "
        "Same as -S extract.nproc=N (finetune.nproc for finetune and scratch). Across "
        "machines, run torchrun yourself: torchrun --nnodes ... -m thawline stage NAME",
    )
    sub.add_parser("config", parents=[common], help="print the validated config as JSON")
    flow = sub.add_parser(
        "flow",
        parents=[common],
        help="Prefect flows: run the pipeline, retrain on data changes, serve on a schedule",
        description="run: every stage as a Prefect flow (-S overrides are written to "
        "params.yaml, as dvc exp run -S does); retrain: do only what a change in the data "
        "source needs; serve: register both flows as deployments on flow.cron and "
        "flow.retrain_cron and run them when due (prefect deployment ls lists them).",
    )
    flow.add_argument("action", choices=["run", "retrain", "serve"])
    sub.add_parser(
        "report", parents=[common], help="write the HTML report of the latest run (paths.report)"
    )
    from thawline.predict import add_predict_arguments

    add_predict_arguments(
        sub.add_parser(
            "predict",
            help="top-k labels for images or folders from a registered or saved model",
            description="Predict with a model, e.g. "
            "thawline predict --model models:/thawline@champion photo.jpg folder/",
        )
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Prefect's API calls, one line each
    what = getattr(args, "name", args.command)
    try:
        if args.command == "predict":
            from thawline.predict import main_predict

            return main_predict(args)
        if args.command == "flow":
            return run_flow(args)
        if getattr(args, "nproc", None) is not None:
            args.overrides.append(f"{nproc_key(args.name)}={args.nproc}")
        cfg = load_config(args.params, args.overrides)
        if args.command == "config":
            print(json.dumps(dump_config(cfg), indent=2))
            return 0
        if args.command == "report":
            from thawline.reporting.html import write_report

            print(f"thawline: report written to {write_report(cfg)}", file=sys.stderr)
            return 0
        from thawline import distributed  # imports torch: not for config, flow or --help

        if distributed.env_rank() != 0:  # under torchrun rank 0 speaks for all; others warn
            logging.getLogger().setLevel(logging.WARNING)
        nproc = getattr(cfg, DISTRIBUTED[args.name]).nproc if args.name in DISTRIBUTED else 1
        if nproc > 1 and not distributed.under_torchrun():
            return distributed.launch(stage_argv(args), nproc)
        return run_stage(cfg, args.name, progress=not args.quiet and sys.stderr.isatty())
    except ConfigError as err:
        print(f"thawline: config error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        if type(err).__name__ not in USER_ERRORS:
            raise
        print(f"thawline: {what} failed: {err}", file=sys.stderr)
        return 1


def nproc_key(stage: str) -> str:
    """The param ``--nproc`` sets for ``stage``."""
    if stage not in DISTRIBUTED:
        raise ConfigError(
            f"--nproc: stage '{stage}' runs in one process; only {sorted(DISTRIBUTED)} run "
            "under torchrun"
        )
    return f"{DISTRIBUTED[stage]}.nproc"


def stage_argv(args: argparse.Namespace) -> list[str]:
    """The same ``thawline stage`` command for each torchrun process (overrides included)."""
    argv = ["stage", args.name, "-p", args.params]
    argv += [item for override in args.overrides for item in ("-S", override)]
    return argv + (["-q"] if args.quiet else [])


def run_flow(args: argparse.Namespace) -> int:
    """``thawline flow ...``: the Prefect side lives in ``pipelines/`` (the only prefect user)."""
    if args.action != "run" and args.overrides:
        raise ConfigError(f"flow {args.action}: -S overrides apply to 'flow run' only")
    if args.action == "run":
        from pipelines.training import training

        print(json.dumps(training(args.params, args.overrides), indent=1))
    elif args.action == "retrain":
        from pipelines.retrain import retrain

        print(json.dumps(retrain(args.params), indent=1))
    else:
        from pipelines.deploy import serve

        serve(args.params)
    return 0


def run_stage(cfg, name: str, progress: bool) -> int:
    """Run one stage inside its MLflow run; epoch metrics reach MLflow through callbacks."""
    from thawline import distributed

    module = importlib.import_module(f"thawline.stages.{name}")
    if distributed.env_rank() != 0:  # under torchrun only rank 0 tracks and reports
        module.run(cfg, progress=False)
        return 0
    from thawline.tracking import stage_run

    accepted = inspect.signature(module.run).parameters
    started = time.perf_counter()
    with stage_run(cfg, name) as tracker:
        callbacks = {
            "on_epoch_end": tracker.log_epoch,
            "on_candidate": getattr(tracker, "log_candidate", None),
        }
        kwargs = {k: v for k, v in callbacks.items() if k in accepted and v is not None}
        result = module.run(cfg, progress=progress, **kwargs)
        tracker.log_result(result)
    seconds = time.perf_counter() - started
    metrics = ", ".join(f"{k}={v:g}" for k, v in result.metrics.items())
    print(f"thawline: {name} done in {seconds:.1f}s ({metrics})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
