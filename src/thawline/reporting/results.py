"""The models that ran and their results, one row each, for the report's comparison table.

``evaluate`` scores every trained model (``thawline.evaluation.artifacts``: ``compare/<model>/``);
the models and the stages that train them come from the stage table; their wall times from the
run statistics (``thawline.run_stats``), which are not DVC outputs. A model that was not
evaluated gets no row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from thawline.config import Config
from thawline.evaluation import artifacts
from thawline.models.storage import head_files, read_head_meta
from thawline.run_stats import read_stats
from thawline.stage_table import MODELS, trained_by

COLUMNS = ("accuracy", "tta_accuracy", "macro_f1", "ece", "loss", "brier", "temperature",
           "uncalibrated_ece", "roc_auc", "sensitivity", "specificity")  # fmt: skip
# (model, scored folder) or (model, scored folder, wall times): a caller comparing folders of
# its own may have no times to give.
Strategy = tuple[str, Path] | tuple[str, Path, dict[str, float | None]]


def strategy_folders(cfg: Config) -> list[Strategy]:
    """Every model's ``(name, comparison folder, times)``, in table order (probe first), then
    the baselines evaluate compared them with.

    ``times``: ``wall_time_s``, the model's own stage; ``total_time_s``, with the stages it
    builds on (extraction for the probe, and the probe for the fine-tune): transfer learning's
    real cost.
    """
    seconds = {s: read_stats(cfg.paths.stats, s).get("seconds") for s in ("extract", "train_head")}
    rows = []
    for name in MODELS:
        stage = trained_by(name)
        wall = read_stats(cfg.paths.stats, stage.name).get("seconds")
        if wall is None and name == MODELS[0] and head_files(cfg.paths.head).spec.is_file():
            wall = read_head_meta(cfg.paths.head).get("seconds")  # heads saved by older versions
        upstream = [seconds[s] for s in stage.builds_on]
        total = None if wall is None or None in upstream else wall + sum(upstream)
        rows.append(
            (
                name,
                artifacts.comparison_folder(cfg.paths.evaluation, name),
                {"wall_time_s": wall, "total_time_s": total},
            )
        )
    for name in artifacts.compared_models(cfg.paths.evaluation):  # baselines: TF-IDF for text
        if name not in MODELS:
            folder = artifacts.comparison_folder(cfg.paths.evaluation, name)
            found = artifacts.read_scored(folder)
            seconds = ((found or ({}, {}))[1].get("details") or {}).get("train_seconds")
            rows.append((name, folder, {"wall_time_s": float(seconds) if seconds else None,
                                        "total_time_s": None}))  # fmt: skip
    return rows


def read_results(strategies: list[Strategy]) -> list[dict[str, Any]]:
    """One row per model that was evaluated.

    Returns:
        Rows ``{strategy, model, how, chosen, accuracy, macro_f1, ..., val_accuracy,
        wall_time_s, total_time_s, split, split_fingerprint, num_examples, folder}``; metrics a
        model lacks are None.
    """
    rows = []
    for name, folder, *times in strategies:
        found = artifacts.read_scored(folder)
        if found is None:
            continue
        metrics, summary = found
        rows.append(
            {
                "strategy": name,
                "model": summary.get("model", name),
                **{key: metrics.get(key) for key in COLUMNS},
                "how": (summary.get("details") or {}).get("strategy", name),
                "chosen": bool(summary.get("chosen")),
                "val_accuracy": summary.get("val_accuracy"),
                "wall_time_s": None,
                "total_time_s": None,
                **(times[0] if times else {}),
                "split": summary.get("split"),
                "split_fingerprint": summary.get("split_fingerprint"),
                "num_examples": summary.get("num_examples"),
                "folder": str(folder),
            }
        )
    return rows


def same_split(rows: list[dict[str, Any]]) -> bool:
    """Whether every row was scored on the same pinned split (so the numbers compare)."""
    return len({row["split_fingerprint"] for row in rows}) <= 1
