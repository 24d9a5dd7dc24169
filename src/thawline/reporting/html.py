"""``thawline report``: one self-contained HTML page for the latest pipeline run.

Headline metrics, every plot (PNG embedded as base64, so the page travels as one file), the
most-confused and per-class tables, and a comparison of every strategy that ran. Only the standard
library renders it; every piece of text from the data goes through :func:`html.escape`.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from thawline.config import Config
from thawline.errors import EvaluationError
from thawline.evaluation import artifacts
from thawline.files import atomic_path
from thawline.reporting.results import Strategy, read_results, same_split, strategy_folders

TITLES = {
    "confusion_matrix": "Confusion matrix",
    "reliability": "Calibration (reliability diagram)",
    "curves": "Training curves",
    "roc": "ROC curve",
    "gallery": "Top losses",
}
HEADLINE = ("accuracy", "macro_f1", "ece", "loss", "roc_auc", "sensitivity", "specificity")
LABELS = {
    "accuracy": "accuracy",
    "macro_f1": "macro F1",
    "ece": "calibration error (ECE)",
    "loss": "log-loss",
    "roc_auc": "ROC-AUC",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
}
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1100px;
color:#222;padding:0 1rem}
h1{margin-bottom:.2rem}.sub{color:#666;margin-top:0}
.cards{display:flex;flex-wrap:wrap;gap:.8rem}.card{border:1px solid #ddd;border-radius:8px;
padding:.6rem 1rem;min-width:8rem}.card b{display:block;font-size:1.5rem}
table{border-collapse:collapse;margin:.5rem 0 1.5rem}th,td{border-bottom:1px solid #e4e4e4;
padding:.3rem .7rem;text-align:right}th:first-child,td:first-child{text-align:left}
th{background:#f5f5f5}tr.best td{font-weight:600}
figure{margin:1rem 0}img{max-width:100%;border:1px solid #eee}.warn{color:#a15c00}
"""


def write_report(cfg: Config, strategies: list[Strategy] | None = None) -> Path:
    """Write the HTML report of the latest run to ``cfg.paths.report``.

    Args:
        cfg: The config; the headline and plots come from ``paths.evaluation``.
        strategies: ``(name, evaluation folder, times)`` for the comparison table; default
            :func:`~thawline.reporting.results.strategy_folders`.

    Returns:
        The report's path.

    Raises:
        EvaluationError: ``paths.evaluation`` holds no evaluation.
    """
    folder = cfg.paths.evaluation
    if not artifacts.has_evaluation(folder):
        raise EvaluationError(
            f"{folder / artifacts.METRICS}: no evaluation here; run 'thawline stage evaluate' first"
        )
    rows = read_results(strategies if strategies is not None else strategy_folders(cfg))
    page = render_report(folder, rows)
    with atomic_path(cfg.paths.report) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return cfg.paths.report


def render_report(folder: Path, rows: list[dict[str, Any]]) -> str:
    """The report page for the evaluation in ``folder`` and the strategy ``rows``."""
    metrics = artifacts.read_metrics(folder)
    summary = artifacts.read_summary(folder)
    figures = (_figure(artifacts.figure_path(folder, n), TITLES[n]) for n in artifacts.FIGURES)
    parts = [
        _header(summary),
        _section("Headline metrics", _cards(metrics)),
        _section("Strategies", _strategies_table(rows)),
        _section("Plots", "".join(figures)),
        _section("Most confused", _most_confused(artifacts.read_table(folder, "most_confused"))),
        _section("Per class", _per_class(artifacts.read_table(folder, "per_class"))),
    ]
    if documents := artifacts.read_table(folder, "gallery"):  # a text model's top losses
        parts.insert(4, _section("Top losses", _documents(documents)))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>thawline report</title>"
        f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n"
    )


def _header(summary: dict) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    facts = [f"generated {now}"]
    if summary:
        fingerprint = str(summary.get("split_fingerprint", ""))[:12]
        facts += [
            f"model {summary.get('model')}",
            f"split {summary.get('split')} ({summary.get('num_examples')} examples, "
            f"fingerprint {fingerprint})",
            f"{len(summary.get('classes', []))} classes",
        ]
    return f"<h1>thawline report</h1><p class='sub'>{_e(' · '.join(facts))}</p>"


def _cards(metrics: dict[str, float]) -> str:
    keys = [k for k in HEADLINE if k in metrics] + [k for k in metrics if k not in HEADLINE]
    cards = (
        f"<div class='card'>{_e(LABELS.get(k, k))}<b>{_num(metrics[k])}</b></div>" for k in keys
    )
    return f"<div class='cards'>{''.join(cards)}</div>"


def _strategies_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>No strategy has been evaluated yet.</p>"
    metric_keys = [k for k in HEADLINE if any(row.get(k) is not None for row in rows)]
    best = max(rows, key=lambda row: row.get("accuracy") or 0.0)
    header = [
        "model", "strategy", *(LABELS[k] for k in metric_keys), "val accuracy",
        "train time (s)", "with upstream (s)", "split",
    ]  # fmt: skip
    body = []
    for row in rows:
        name = row["strategy"] + (" (chosen)" if row.get("chosen") else "")
        cells = [name, row.get("how", row["model"]), *(_num(row.get(k)) for k in metric_keys)]
        cells += [_num(row.get("val_accuracy")), _num(row.get("wall_time_s"), 1)]
        cells += [_num(row.get("total_time_s"), 1), _split_label(row)]
        body.append((cells, row is best and len(rows) > 1))
    note = "" if same_split(rows) else (
        "<p class='warn'>These strategies were scored on different splits "
        "(fingerprints differ); their numbers do not compare directly.</p>"
    )  # fmt: skip
    return note + _table(header, body)


def _split_label(row: dict[str, Any]) -> str:
    fingerprint = str(row.get("split_fingerprint") or "")[:12]
    return f"{row.get('split') or '?'} {fingerprint}".strip()


def _most_confused(rows: list[dict] | None) -> str:
    if not rows:
        return "<p>No confusions: every example was classified correctly.</p>"
    body = [([r["actual"], r["predicted"], str(r["count"])], False) for r in rows]
    return _table(["actual", "predicted", "count"], body)


def _documents(rows: list[dict]) -> str:
    body = [([r["true"], r["pred"], _num(r["p"], 2), r["text"][:300] + "…"], False) for r in rows]
    return _table(["true", "predicted", "p", "document (start)"], body)


def _per_class(rows: list[dict] | None) -> str:
    if not rows:
        return "<p>No per-class results.</p>"
    body = [
        ([r["class"], _num(r["precision"]), _num(r["recall"]), _num(r["f1"]), str(r["support"])],
         False)
        for r in rows
    ]  # fmt: skip
    return _table(["class", "precision", "recall", "F1", "support"], body)


def _figure(path: Path, title: str) -> str:
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f"<figure><figcaption><h3>{_e(title)}</h3></figcaption>"
        f"<img alt='{_e(title)}' src='data:image/png;base64,{data}'></figure>"
    )


def _table(header: Sequence[str], rows: Iterable[tuple[Sequence[str], bool]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        f"<tr{' class=best' if best else ''}>{''.join(f'<td>{_e(c)}</td>' for c in cells)}</tr>"
        for cells, best in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _section(title: str, content: str) -> str:
    return f"<section><h2>{_e(title)}</h2>{content}</section>"


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)
