"""The ``thawline`` command: a thin wrapper that loads the config and calls a stage's ``run``.

thawline stage prepare
thawline stage extract -S backbone.name=torchvision:resnet18 -S backbone.weights=imagenet
thawline stage finetune --nproc 2   # DDP under torchrun, 2 processes on this machine
thawline config            # print the validated config

Exit codes (thawline.errors): 0 done, 1 a stage failed with its own error, 2 bad input or
config, 3 a crash (a traceback is printed), 143/130 stopped by SIGTERM/SIGINT (resumable).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from pathlib import Path

from thawline import __version__
from thawline.config import ConfigError, dump_config, load_config
from thawline.errors import CRASH, ThawlineError
from thawline.stage_runner import nproc_key, run_command_stage
from thawline.stage_status import StageStatus, write_status
from thawline.stage_table import NAMES, STAGES
from thawline.torchrun_env import env_rank, under_torchrun

EPILOG = (
    "exit codes: 0 done, 1 a stage failed, 2 bad input or config, 3 a crash, "
    "143/130 stopped by SIGTERM/SIGINT (rerun to resume)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="thawline",
        description="Transfer learning that freezes, caches and thaws. Stages read params.yaml; "
        "dvc.yaml runs them in order (dvc repro).",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"thawline {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _common_options()
    _add_stage_command(sub, common)
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
    sub.add_parser(
        "summary", parents=[common],
        help="each model's test accuracy, the champion and where to look next (make run ends "
        "with it)",
    )  # fmt: skip
    from thawline.predict import add_predict_arguments

    add_predict_arguments(
        sub.add_parser(
            "predict",
            help="top-k labels for images, documents or folders from a registered or saved model",
            description="Predict with a model, e.g. "
            "thawline predict --model models:/thawline@champion photo.jpg folder/, or "
            "thawline predict --model models:/thawline-text@champion --text 'Shares fell...'",
            epilog=EPILOG,
        )
    )
    from thawline.find_lr import add_lr_find_arguments

    add_lr_find_arguments(
        sub.add_parser(
            "lr-find", parents=[common],
            help="fastai's LR range test for the head on the cached features (seconds): the "
            "suggestions and a plot",
            description="Train a throw-away head with the LR growing from --start to --end, "
            "print fastai's valley and steep suggestions and write the curve to "
            "paths.stats/lr_find_head.png. head.lr: auto does the same inside train_head.",
            epilog=EPILOG,
        )
    )  # fmt: skip
    from thawline.export import add_export_arguments

    add_export_arguments(
        sub.add_parser(
            "export", parents=[common],
            help="write a model as one ONNX file (raw pixels or token ids in, calibrated "
            "probabilities out), checked against PyTorch with onnxruntime",
            description="Export a model to ONNX, e.g. thawline export --model "
            "models:/thawline@champion --out model.onnx. The check items are the project's "
            "prepared test split (paths.prepared of --params) when it belongs to the model.",
            epilog=EPILOG,
        )
    )  # fmt: skip
    return parser


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-p", "--params", default="params.yaml", help="params file (default: params.yaml)"
    )
    common.add_argument(
        "-v", "--verbose", action="store_true",
        help="also show the INFO logs of the libraries (MLflow, Prefect, matplotlib)",
    )  # fmt: skip
    common.add_argument(
        "-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a param, e.g. -S extract.batch_size=16 (repeatable, validated)",
    )  # fmt: skip
    return common


def _add_stage_command(sub, common: argparse.ArgumentParser) -> None:
    distributed = sorted(s.name for s in STAGES if s.nproc_section)
    command = sub.add_parser(
        "stage",
        parents=[common],
        help="run one pipeline stage",
        description="Run one stage. Stages: "
        + "; ".join(f"{s.name}: {s.description} (paths.{s.output})" for s in STAGES),
        epilog=EPILOG,
    )
    command.add_argument("name", choices=list(NAMES), help="the stage to run")
    command.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    command.add_argument(
        "--nproc", type=int, metavar="N",
        help=f"run in N processes on this machine under torchrun ({', '.join(distributed)}; "
        "extract: ranks split the shards; finetune, scratch: DistributedDataParallel, gloo on "
        "CPU, nccl on CUDA). Same as -S <section>.nproc=N. Across machines, run torchrun "
        "yourself: torchrun --nnodes ... -m thawline stage NAME",
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries(verbose=getattr(args, "verbose", False))
    what = getattr(args, "name", args.command)
    status = StageStatus(what, 0)
    try:
        status = _dispatch(args)
    except ConfigError as err:
        print(f"thawline: config error: {one_line(err)}", file=sys.stderr)
        status = StageStatus(what, err.exit_code, f"config error: {err}")
    except ThawlineError as err:
        print(f"thawline: {what} failed: {err}", file=sys.stderr)
        status = StageStatus(what, err.exit_code, str(err))
    except Exception as err:  # a bug or the environment: the traceback is what helps
        traceback.print_exc()
        status = StageStatus(what, CRASH, f"{type(err).__name__}: {err}")
    if args.command == "stage":
        write_status(status, env_rank() if under_torchrun() else None)
    return status.exit_code


def one_line(err: Exception) -> str:
    """The message on one line: a value a user typed may hold a newline (hypothesis found one)."""
    return str(err).replace("\r", "\\r").replace("\n", "\\n")


def quiet_libraries(verbose: bool) -> None:
    """thawline's own INFO lines; the libraries' only with ``--verbose``.

    Without it MLflow's store migrations and "Validating input example", matplotlib's font cache,
    MLflow's carriage-return download bar and the per-request lines of Prefect's HTTP client
    stay out of the way (a flow's own logs are Prefect's to show).
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("thawline").setLevel(logging.INFO)
    if not verbose:
        for noisy in ("mlflow", "alembic", "matplotlib", "httpx"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # set when mlflow is imported
    # Prefect's usage analytics: a fresh ~/.prefect printed a 100-line telemetry traceback.
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _dispatch(args: argparse.Namespace) -> StageStatus:
    """Run the command; how it ended (errors propagate to :func:`main`)."""
    what = getattr(args, "name", args.command)
    if args.command == "predict":
        from thawline.predict import main_predict

        return StageStatus(what, main_predict(args))
    if args.command == "flow":
        return StageStatus(what, run_flow(args))
    if args.command == "export":
        from thawline.export import main_export

        params = Path(args.params)
        prepared = load_config(params, args.overrides).paths.prepared if params.is_file() else None
        return StageStatus(what, main_export(args, prepared))
    if getattr(args, "nproc", None) is not None:
        args.overrides.append(f"{nproc_key(args.name)}={args.nproc}")
    cfg = load_config(args.params, args.overrides)
    if args.command == "config":
        print(json.dumps(dump_config(cfg), indent=2))
        return StageStatus(what, 0)
    if args.command == "lr-find":
        from thawline.find_lr import main_lr_find

        return StageStatus(what, main_lr_find(args, cfg))
    if args.command == "summary":
        from thawline.run_summary import summary_lines

        print("\n".join(summary_lines(cfg)))
        return StageStatus(what, 0)
    if args.command == "report":
        from thawline.reporting.html import write_report

        print(f"thawline: report written to {write_report(cfg)}", file=sys.stderr)
        return StageStatus(what, 0)
    return run_command_stage(cfg, args)


def run_flow(args: argparse.Namespace) -> int:
    """``thawline flow ...``: the Prefect side lives in ``pipelines/`` (the only prefect user)."""
    if args.action != "run" and args.overrides:
        raise ConfigError(f"flow {args.action}: -S overrides apply to 'flow run' only")
    if args.action == "run":
        from pipelines.training_flow import training

        print(json.dumps(training(args.params, args.overrides), indent=1))
    elif args.action == "retrain":
        from pipelines.retrain_flow import retrain

        print(json.dumps(retrain(args.params), indent=1))
    else:
        from pipelines.deploy import serve

        serve(args.params)
    return 0


if __name__ == "__main__":
    sys.exit(main())
