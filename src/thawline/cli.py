"""The ``thawline`` command: a thin wrapper that loads the config and calls a stage's ``run``.

thawline stage prepare
thawline stage extract -S backbone.name=torchvision:resnet18 -S backbone.weights=imagenet
thawline config            # print the validated config
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time

from thawline import __version__
from thawline.config import ConfigError, dump_config, load_config

STAGES = {
    "prepare": "decode, split and hash the data source into a uint8 store (paths.prepared)",
    "extract": "run the frozen backbone once and cache its features (paths.features)",
}
# Errors whose message already says what is wrong and what to do: no traceback for these.
USER_ERRORS = (
    "ConfigError",
    "SourceError",
    "BadImageError",
    "StoreError",
    "CacheError",
    "WeightsError",
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
    sub.add_parser("config", parents=[common], help="print the validated config as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.params, args.overrides)
        if args.command == "config":
            print(json.dumps(dump_config(cfg), indent=2))
            return 0
        module = importlib.import_module(f"thawline.stages.{args.name}")
        started = time.perf_counter()
        result = module.run(cfg, progress=not args.quiet and sys.stderr.isatty())
    except ConfigError as err:
        print(f"thawline: config error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        if type(err).__name__ not in USER_ERRORS:
            raise
        print(f"thawline: {args.name} failed: {err}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - started
    metrics = ", ".join(f"{k}={v:g}" for k, v in result.metrics.items())
    print(f"thawline: {args.name} done in {seconds:.1f}s ({metrics})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
