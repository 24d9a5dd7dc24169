"""The strategies that ran and their results, one row each, for the report's comparison table.

``evaluate`` scores every trained model into ``compare/<model>/`` (``metrics.json`` and
``summary.json``). The registry is the list of ``(name, folder)`` pairs below: a strategy whose
folder holds no ``metrics.json`` did not run and gets no row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from thawline.config import Config
from thawline.files import read_json

MODELS = ("head_only", "finetuned", "scratch")  # table order: probe, fine-tune, baseline
METRICS, SUMMARY = "metrics.json", "summary.json"
COLUMNS = ("accuracy", "macro_f1", "ece", "loss", "roc_auc", "sensitivity", "specificity")


def strategy_folders(cfg: Config) -> list[tuple[str, Path]]:
    """Every model's comparison folder under ``paths.evaluation``, in table order."""
    return [(name, cfg.paths.evaluation / "compare" / name) for name in MODELS]


def read_results(strategies: list[tuple[str, Path]]) -> list[dict[str, Any]]:
    """One row per strategy that ran.

    Returns:
        Rows ``{strategy, model, how, chosen, accuracy, macro_f1, ..., val_accuracy,
        wall_time_s, total_time_s, split, split_fingerprint, num_examples, folder}``; metrics a
        strategy lacks are None.
    """
    rows = []
    for name, folder in strategies:
        folder = Path(folder)
        if not (folder / METRICS).is_file():
            continue
        metrics = read_json(folder / METRICS)
        summary = read_json(folder / SUMMARY) if (folder / SUMMARY).is_file() else {}
        rows.append(
            {
                "strategy": name,
                "model": summary.get("model", name),
                **{key: metrics.get(key) for key in COLUMNS},
                "how": (summary.get("details") or {}).get("strategy", name),
                "chosen": bool(summary.get("chosen")),
                "val_accuracy": summary.get("val_accuracy"),
                "wall_time_s": summary.get("wall_time_s"),
                "total_time_s": summary.get("total_time_s"),
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
