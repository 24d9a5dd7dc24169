"""The few lines ``make run`` ends with: each model's test accuracy, the champion, and where to
look next. Read from the files the stages wrote, so it works after ``dvc repro`` found nothing
to do as well."""

from __future__ import annotations

from thawline.config import Config
from thawline.evaluation.artifacts import read_metrics, read_registration
from thawline.stage_table import MODELS
from thawline.tracking.store import tracking_uri


def summary_lines(cfg: Config) -> list[str]:
    metrics = read_metrics(cfg.paths.evaluation)
    if not metrics:
        return [f"no evaluation in {cfg.paths.evaluation} yet: run 'dvc repro'"]
    lines = ["test accuracy:"]
    text = cfg.data.modality == "text"
    baselines = [k.removesuffix("_accuracy") for k in metrics
                 if k.endswith("_accuracy") and not k.endswith("tta_accuracy")]  # fmt: skip
    for model in [*MODELS, *(b for b in baselines if b not in MODELS)]:  # + TF-IDF for text
        if (value := metrics.get(f"{model}_accuracy")) is not None:
            tta = metrics.get(f"{model}_tta_accuracy")
            beside = "" if tta is None else f"  (with TTA {tta:.4f})"
            lines.append(f"  {model:<10} {value:.4f}{beside}")
    if "accuracy_ci_low" in metrics:
        lines.append(
            f"  chosen model: {metrics['accuracy']:.4f} (95% interval "
            f"{metrics['accuracy_ci_low']:.4f}-{metrics['accuracy_ci_high']:.4f}, "
            f"{int(metrics['examples'])} {'documents' if text else 'images'})"
        )
    if "temperature" in metrics:
        lines.append(
            f"  calibration: temperature {metrics['temperature']:.3f}, ECE "
            f"{metrics['uncalibrated_ece']:.4f} -> {metrics['ece']:.4f}, log-loss "
            f"{metrics['uncalibrated_loss']:.4f} -> {metrics['loss']:.4f}"
        )
    registration = read_registration(cfg.paths.registration)
    onnx = registration.get("onnx") or {}
    if onnx.get("exported"):
        lines.append(f"ONNX: {onnx['path']} (onnxruntime within {onnx['max_abs_difference']:.0e}"
                     f" of PyTorch on {onnx['checked_examples']} test items)")  # fmt: skip
    elif onnx:
        lines.append(f"no ONNX file: {onnx.get('reason', '')}")
    if registration.get("registered"):
        decision = registration.get("decision") or {}
        champion = (registration.get("aliases") or {}).get("champion")
        lines.append(f"registered {registration['model_uri']}; champion: version {champion}")
        lines.append(f"  gate: {decision.get('reason', '')}")
    elif registration:
        lines.append(f"not registered: {registration.get('reason', '')}")
    uri = tracking_uri(cfg)
    lines += [
        "next:",
        f"  open {cfg.paths.report}   (thawline report writes it again)",
        f"  mlflow ui --backend-store-uri {uri}",
        "  dvc metrics show             (dvc metrics diff after a change)",
        f"  thawline predict --model models:/{cfg.registry.model_name}@champion "
        + ("--text 'A DOCUMENT' FILE..." if text else "IMAGE..."),
    ]
    return lines
