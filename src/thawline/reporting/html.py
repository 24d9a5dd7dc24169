"""``thawline report``: one self-contained HTML page for the latest pipeline run.

What was chosen and why, the champion gate's decision and links to the MLflow run; every
strategy's accuracy, time and calibration; the data (a sample grid); overlaid training curves;
the confusion matrix with examples of the most confused pairs; calibration before and after
temperature scaling; class-activation maps; top losses; per-class scores; the config. PNGs are
embedded as base64, so the page travels as one file. Only the standard library renders it;
every piece of text from the data is escaped (:mod:`thawline.reporting.markup`).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from thawline.config import Config, dump_config
from thawline.errors import EvaluationError
from thawline.evaluation import artifacts
from thawline.files import atomic_path
from thawline.reporting.markup import e, facts, figure, link, num, section, table
from thawline.reporting.results import Strategy, read_results, same_split, strategy_folders

HEADLINE = ("accuracy", "tta_accuracy", "macro_f1", "ece", "loss", "brier", "temperature",
            "roc_auc", "sensitivity", "specificity")  # fmt: skip
LABELS = {
    "accuracy": "accuracy",
    "tta_accuracy": "accuracy with TTA",
    "macro_f1": "macro F1",
    "ece": "calibration error (ECE)",
    "loss": "log-loss",
    "brier": "Brier score",
    "temperature": "temperature",
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
nav a{margin-right:.8rem}dl{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem}
dt{color:#666}dd{margin:0}.verdict{font-size:1.2rem;font-weight:600}
pre{background:#f7f7f7;padding:.8rem;overflow:auto;font-size:.8rem}.wide{overflow-x:auto}
.wide table{font-size:.85rem}
"""
MLFLOW_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves a local store


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
    registration = artifacts.read_registration(cfg.paths.registration)
    page = render_report(folder, rows, registration, dump_config(cfg))
    with atomic_path(cfg.paths.report) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return cfg.paths.report


def render_report(
    folder: Path, rows: list[dict[str, Any]], registration: dict | None = None,
    config: dict | None = None,
) -> str:  # fmt: skip
    """The report page for the evaluation in ``folder``, the strategy ``rows``, the register
    stage's ``registration`` record and the run's ``config``."""
    metrics, summary = artifacts.read_metrics(folder), artifacts.read_summary(folder)

    def shown(name: str, title: str, caption: str = "") -> str:
        return figure(artifacts.figure_path(folder, name), title, caption)

    parts = [
        ("decision", "Decision", _decision(summary, registration or {})),
        ("metrics", "Headline metrics", _cards(metrics)),
        ("strategies", "Strategies", _strategies_table(rows)),
        ("data", "Data", _data(summary) + shown("samples", "Sample of the training images")),
        ("curves", "Training curves", shown("strategy_curves", "", "Every model's validation "
         "accuracy and loss; curves.png (and MLflow) has the chosen model's training loss too")),
        ("confusion", "Confusion", shown("confusion_matrix", "") +
         _most_confused(artifacts.read_table(folder, "most_confused")) +
         shown("confused_examples", "Examples of the most confused pairs")),
        ("calibration", "Calibration", _calibration(artifacts.read_calibration(folder), metrics)
         + shown("reliability", "")),
        ("cams", "Class-activation maps", _cams(shown)),
        ("losses", "Top losses", _top_losses(folder, shown)),
        ("roc", "ROC", shown("roc", "ROC curve")),
        ("classes", "Per class", _per_class(artifacts.read_table(folder, "per_class"))),
        ("config", "Configuration", _config(config)),
    ]  # fmt: skip
    parts = [(anchor, title, content) for anchor, title, content in parts if content]
    nav = "<nav>" + "".join(link(f"#{a}", t) for a, t, _ in parts) + "</nav>"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>thawline report</title><style>{STYLE}</style></head><body>{_header(summary)}"
        f"{nav}{''.join(section(t, c, a) for a, t, c in parts)}</body></html>\n"
    )


def _header(summary: dict) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"generated {now}"]
    if summary:
        fingerprint = str(summary.get("split_fingerprint", ""))[:12]
        parts += [
            f"model {summary.get('model')}",
            f"split {summary.get('split')} ({summary.get('num_examples')} examples, "
            f"fingerprint {fingerprint})",
            f"{len(summary.get('classes', []))} classes",
        ]
    return f"<h1>thawline report</h1><p class='sub'>{e(' · '.join(parts))}</p>"


def _decision(summary: dict, registration: dict) -> str:
    """Which model, why, what the champion gate said, and where MLflow has it."""
    chosen = f"<p class='verdict'>Chosen: {e(summary.get('model', '?'))}</p>"
    why = [("why", summary.get("reason")), ("skipped", ", ".join(summary.get("skipped") or {})
                                                     or None)]  # fmt: skip
    if not registration:
        return chosen + facts(why) + "<p>Not registered yet: run 'thawline stage register'.</p>"
    decision = registration.get("decision") or {}
    verdict = "promoted to champion" if decision.get("promote") else "champion stays"
    gate = [
        ("registered as", registration.get("model_uri")),
        ("champion gate", f"{verdict}: {decision.get('reason', registration.get('reason'))}"),
        ("McNemar p-value", num(decision.get("p_value"))),
        ("aliases", ", ".join(f"{k} = v{v}" for k, v in (registration.get("aliases") or {})
                              .items()) or None),
        ("ONNX", (registration.get("onnx") or {}).get("path")),
    ]  # fmt: skip
    return chosen + facts(why + gate) + _mlflow_links(registration)


def _mlflow_links(registration: dict) -> str:
    run, experiment = registration.get("run_id"), registration.get("experiment_id")
    if not run or not experiment:
        return ""
    uri = str(registration.get("tracking_uri") or "")
    ui = uri.rstrip("/") if uri.startswith(("http://", "https://")) else MLFLOW_UI
    name, version = registration.get("model_name"), registration.get("version")
    links = [link(f"{ui}/#/experiments/{experiment}/runs/{run}", f"the register run {run[:8]}")]
    if name and version:
        links.append(link(f"{ui}/#/models/{name}/versions/{version}", f"{name} version {version}"))
    hint = (
        ""
        if ui != MLFLOW_UI
        else (f"<p class='sub'>Start the UI first: mlflow ui --backend-store-uri {e(uri)}</p>")
    )
    return f"<p>MLflow: {' · '.join(links)}</p>{hint}"


def _cards(metrics: dict[str, float]) -> str:
    """The chosen model's headline scores; the full list is metrics.json (and MLflow)."""
    cards = [(LABELS[k], num(metrics[k])) for k in HEADLINE if k in metrics]
    if "accuracy_ci_low" in metrics:
        interval = f"{metrics['accuracy_ci_low']:.3f}–{metrics['accuracy_ci_high']:.3f}"
        cards.insert(1, ("accuracy, Wilson 95%", interval))
    if "examples" in metrics:
        cards.append(("examples", f"{int(metrics['examples']):,}"))
    body = "".join(f"<div class='card'>{e(label)}<b>{e(value)}</b></div>" for label, value in cards)
    return f"<div class='cards'>{body}</div>"


def _strategies_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>No strategy has been evaluated yet.</p>"
    metric_keys = [k for k in HEADLINE if k != "loss" and any(row.get(k) is not None
                                                               for row in rows)]  # fmt: skip
    best = max(rows, key=lambda row: row.get("accuracy") or 0.0)
    header = [
        "model", "strategy", *(LABELS[k] for k in metric_keys), "ECE before scaling",
        "val accuracy", "train time (s)", "with upstream (s)", "split",
    ]  # fmt: skip
    body = []
    for row in rows:
        name = row["strategy"] + (" (chosen)" if row.get("chosen") else "")
        cells = [name, row.get("how", row["model"]), *(num(row.get(k)) for k in metric_keys)]
        cells += [num(row.get("uncalibrated_ece")), num(row.get("val_accuracy"))]
        cells += [num(row.get("wall_time_s"), 1), num(row.get("total_time_s"), 1)]
        body.append(([*cells, _split_label(row)], row is best and len(rows) > 1))
    note = "" if same_split(rows) else (
        "<p class='warn'>These strategies were scored on different splits "
        "(fingerprints differ); their numbers do not compare directly.</p>"
    )  # fmt: skip
    calibrated = (
        "<p class='sub'>Calibration figures of the chosen model are after temperature "
        "scaling (what it outputs once registered); the others' are as trained.</p>"
    )
    return f"{note}<div class='wide'>{table(header, body)}</div>{calibrated}"


def _split_label(row: dict[str, Any]) -> str:
    fingerprint = str(row.get("split_fingerprint") or "")[:12]
    return f"{row.get('split') or '?'} {fingerprint}".strip()


def _data(summary: dict) -> str:
    data = summary.get("data") or {}
    items = data.get("items") or {}
    classes = summary.get("classes") or []
    return facts([
        ("modality", data.get("modality")),
        ("items per split", ", ".join(f"{k} {v:,}" for k, v in items.items()) or None),
        ("stored image size", data.get("image_size")),
        ("classes", f"{len(classes)}: {', '.join(map(str, classes[:30]))}"
                    + (" …" if len(classes) > 30 else "")),
    ])  # fmt: skip


def _calibration(fit: dict, metrics: dict[str, float]) -> str:
    if not fit:
        return ""
    rows = [([LABELS[k], num(metrics.get(f"uncalibrated_{k}")), num(metrics.get(k))], False)
            for k in ("ece", "loss", "brier") if k in metrics]  # fmt: skip
    verdict = f"<p>Temperature T = {fit.get('temperature', 1.0):.4f}: {e(fit.get('reason'))}.</p>"
    return verdict + table(["test metric", "before scaling", "after scaling"], rows)


def _cams(shown) -> str:
    return shown("cams_top_losses", "Top losses", "Grad-CAM of the predicted class on the "
                 "backbone's last feature map (red: what drove the prediction)") + \
        shown("cams_per_class", "One correct example per class")  # fmt: skip


def _top_losses(folder: Path, shown) -> str:
    if documents := artifacts.read_table(folder, "gallery"):  # a text model's top losses
        body = [([r["true"], r["pred"], num(r["p"], 2), r["text"][:300] + "…"], False)
                for r in documents]  # fmt: skip
        return table(["true", "predicted", "p", "document (start)"], body)
    return shown("gallery", "", "The test images the model got most wrong")


def _most_confused(rows: list[dict] | None) -> str:
    if not rows:
        return "<p>No confusions: every example was classified correctly.</p>"
    return table(
        ["actual", "predicted", "count"],
        [([r["actual"], r["predicted"], str(r["count"])], False) for r in rows],
    )


def _per_class(rows: list[dict] | None) -> str:
    if not rows:
        return "<p>No per-class results.</p>"
    body = [([r["class"], num(r["precision"]), num(r["recall"]), num(r["f1"]), str(r["support"])],
             False) for r in rows]  # fmt: skip
    return table(["class", "precision", "recall", "F1", "support"], body)


def _config(config: dict | None) -> str:
    if not config:
        return ""
    backbone = config.get("backbone") or {}
    return facts([("backbone", backbone.get("name")), ("weights", backbone.get("weights")),
                  ("fine-tune strategy", (config.get("finetune") or {}).get("strategy"))]) + (
        f"<details><summary>params (validated)</summary><pre>"
        f"{e(json.dumps(config, indent=1, default=str))}</pre></details>"
    )  # fmt: skip
