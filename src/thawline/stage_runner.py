"""``thawline stage NAME``: one stage under the output's lock, in its MLflow run, with
SIGTERM/SIGINT handled; under torchrun when the stage's ``nproc`` asks for more processes.

The CLI parses and dispatches; this module runs. ``run_stage`` is also what tests call to run a
stage as the CLI would (tracking and callbacks included).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import sys
import time
from pathlib import Path

from thawline.config import ConfigError, record_reads
from thawline.files import remove_stale_temps
from thawline.locks import output_lock
from thawline.stage_status import StageStatus, rank_reports
from thawline.stage_table import STAGES, StageResult, stage
from thawline.stopping import graceful_stop
from thawline.torchrun_env import env_rank, under_torchrun


def run_command_stage(cfg, args: argparse.Namespace) -> StageStatus:
    """``thawline stage NAME``: how it ended (errors propagate to the CLI's ``main``)."""
    if env_rank() != 0:  # under torchrun rank 0 speaks for all; others warn
        logging.getLogger().setLevel(logging.WARNING)
    if under_torchrun():  # the launching process holds the output's lock
        return _stage_locked(cfg, args)
    output = Path(getattr(cfg.paths, stage(args.name).output))
    with output_lock(output, cfg.system.lock_wait_s, f"stage {args.name}"):
        # Crash-only start: what a killed run left (temp files of dead writers) goes first.
        for folder in (output, output.parent) if output.is_dir() else (output.parent,):
            remove_stale_temps(folder)
        return _stage_locked(cfg, args)


def _stage_locked(cfg, args: argparse.Namespace) -> StageStatus:
    section = stage(args.name).nproc_section
    nproc = getattr(cfg, section).nproc if section else 1
    if nproc > 1 and not under_torchrun():
        from thawline import distributed  # imports torch: not for config, --help or a skip

        with rank_reports(args.name) as status_of:
            return status_of(distributed.launch(stage_argv(args), nproc))
    result = run_stage(cfg, args.name, progress=not args.quiet)  # plain lines off a terminal
    return StageStatus(args.name, 0, metrics=dict(result.metrics))


def nproc_key(name: str) -> str:
    """The param ``--nproc`` sets for stage ``name``."""
    section = stage(name).nproc_section
    if section is None:
        runs = sorted(s.name for s in STAGES if s.nproc_section)
        raise ConfigError(
            f"--nproc: stage '{name}' runs in one process; only {runs} run under torchrun"
        )
    return f"{section}.nproc"


def stage_argv(args: argparse.Namespace) -> list[str]:
    """The same ``thawline stage`` command for each torchrun process (overrides included)."""
    argv = ["stage", args.name, "-p", args.params]
    argv += [item for override in args.overrides for item in ("-S", override)]
    return argv + (["-q"] if args.quiet else [])


def run_stage(cfg, name: str, progress: bool) -> StageResult:
    """Run one stage inside its MLflow run; epoch metrics reach MLflow through callbacks.
    SIGTERM and SIGINT stop it at a safe point (thawline.stopping)."""
    with graceful_stop(cfg.system.grace_s):
        return _run_stage(cfg, name, progress)


def _run_stage(cfg, name: str, progress: bool) -> StageResult:
    module = importlib.import_module(stage(name).module)
    if env_rank() != 0:  # under torchrun only rank 0 tracks and reports
        return module.run(cfg, progress=False)
    if not stage(name).enabled(cfg):  # it records why, and nothing goes to MLflow
        result = module.run(cfg, progress=False)
        print(f"thawline: {name} skipped: {stage(name).enabled_by} is false", file=sys.stderr)
        return result
    from thawline.tracking import mlflow_errors, stage_run

    accepted = inspect.signature(module.run).parameters
    started = time.perf_counter()
    with mlflow_errors(), stage_run(cfg, name) as tracker:
        callbacks = {
            "on_epoch_end": tracker.log_epoch,
            "on_candidate": getattr(tracker, "log_candidate", None),
        }
        kwargs = {k: v for k, v in callbacks.items() if k in accepted and v is not None}
        with record_reads() as reads:
            result = module.run(cfg, progress=progress, **kwargs)
        tracker.log_read_params(cfg, reads)
        tracker.log_result(result)
    seconds = time.perf_counter() - started
    metrics = ", ".join(f"{k}={v:g}" for k, v in result.metrics.items())
    print(f"thawline: {name} done in {seconds:.1f}s" + (f" ({metrics})" if metrics else ""),
          file=sys.stderr)  # fmt: skip
    return result
