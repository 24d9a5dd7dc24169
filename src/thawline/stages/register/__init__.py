"""``register``: log the complete model to MLflow; ``champion`` moves only through the gate.

Takes the model ``evaluate`` chose: the fine-tuned one, or the one the head was trained for (the
configured backbone and weights, the layers hooked at extraction, and the exact preprocessing
recorded in the feature manifest). Saves it to
``paths.model`` (safetensors + JSON), registers it as a new version with the alias ``challenger``,
then pairs its evaluated predictions with the champion's (McNemar on the same test images: the
champion's logged predictions when the split is unchanged, else the champion scored again on
this split) and moves ``champion`` only if the challenger wins. A DVC experiment in a temp copy
records the verdict without moving any alias. The decision goes to ``paths.registration``.
"""

from __future__ import annotations

import io
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from thawline.config import Config
from thawline.data.store import PreparedStore
from thawline.errors import RegistryError, ThawlineError
from thawline.evaluation import EvaluationError, artifacts
from thawline.evaluation.gate import Decision, champion_gate
from thawline.evaluation.predictions import SavedPredictions, load_predictions
from thawline.features.assemble import build_model
from thawline.files import sha256_file
from thawline.models.classifier import Classifier
from thawline.models.storage import head_files, save_classifier
from thawline.stage_table import MODELS, StageResult, trained_by
from thawline.stages.register.portable import export_portable
from thawline.tracking import load_model, mlflow_errors, stage_run
from thawline.tracking.aliases import aliases
from thawline.tracking.provenance import run_tags as run_tags_of
from thawline.tracking.registry import (
    Registered,
    apply_decision,
    current_champion,
    describe_version,
    download_predictions,
    gate_lock,
    log_and_register,
    record_experiment_decision,
)
from thawline.tracking.store import Store, experiment_name, in_temp_copy
from thawline.tracking.tracker import Tracker
from thawline.training.records import read_record
from thawline.training.trained_model import load_trained

log = logging.getLogger(__name__)
HEAD_ONLY = MODELS[0]
EXAMPLES = 2  # test images in the model's input example
RESCORE_CHUNK = 256  # images per call when scoring the champion on a changed split


def run(cfg: Config, *, progress: bool = True) -> StageResult:
    """Save, register and gate the current model.

    Args:
        cfg: The config; reads ``paths``, ``backbone``, ``tracking`` and ``registry``.
        progress: Accepted like every stage's; there is no long loop to show.

    Raises:
        CacheError: The head, features, backbone weights or preprocessing do not belong together.
        EvaluationError: No evaluation of this data (run ``evaluate`` first), or a stale one.
        RegistryError: The champion alias is gone (its version was deleted): never guessed.
    """
    evaluated = evaluated_predictions(cfg)
    model_dir = save_classifier(evaluated_model(cfg, evaluated), cfg.paths.model)
    portable = export_portable(cfg, model_dir)
    if cfg.tracking.enabled:
        with stage_run(cfg, "register") as tracker:
            record = register_and_gate(cfg, tracker, model_dir, evaluated)
    else:
        reason = f"tracking.enabled is false: the model is saved in {model_dir}, not registered"
        record = {"registered": False, "reason": reason}
    record["onnx"] = portable
    artifacts.write_registration(cfg.paths.registration, record)
    decision = record.get("decision") or {}
    log.info("register: %s", decision.get("reason", record.get("reason")))
    # The version and the verdict are tags and registration.json, not metrics to chart.
    metrics = {
        f"gate_{k}": float(decision[k]) for k in ("p_value", "difference")
        if decision.get(k) is not None
    }  # fmt: skip
    return StageResult(
        outputs={"model": model_dir, "registration": cfg.paths.registration},
        metrics=metrics,
        info=record,
    )


def evaluated_predictions(cfg: Config) -> SavedPredictions:
    """The evaluation's per-image predictions, checked to be of the current prepared split."""
    path = artifacts.predictions_path(cfg.paths.evaluation)
    saved = load_predictions(path)
    store = PreparedStore(cfg.paths.prepared)
    split = saved.meta["split"]
    if (
        split not in store.splits
        or store.split_fingerprint(split) != saved.meta["split_fingerprint"]
    ):
        raise EvaluationError(
            f"{path}: evaluated on another '{split}' split than {cfg.paths.prepared} holds; "
            "rerun 'thawline stage evaluate'"
        )
    return saved


def evaluated_model(cfg: Config, evaluated: SavedPredictions) -> Classifier:
    """The complete model that ``evaluate`` chose and scored: the head's, or the fine-tuned one.

    Raises:
        EvaluationError: The model on disk is not the one evaluated (rerun evaluate).
    """
    chosen = evaluated.meta["model"]
    if chosen != HEAD_ONLY:  # a model trained on images: its stage's folder holds it
        folder = getattr(cfg.paths, trained_by(chosen).output)
        record = read_record(folder) or {}
        model = load_trained(folder, record)
        weights = record["model_sha256"]
    else:
        model = build_model(cfg)
        weights = sha256_file(head_files(cfg.paths.head).weights)
    if evaluated.meta.get("weights_sha256", weights) != weights:
        raise EvaluationError(
            f"{artifacts.predictions_path(cfg.paths.evaluation)}: evaluated another {chosen} "
            "model than the one on disk; rerun 'thawline stage evaluate'"
        )
    temperature = artifacts.read_calibration(cfg.paths.evaluation).get("temperature", 1.0)
    if temperature != 1.0:  # evaluated with it: predict, serve and ONNX output the same
        model.spec["temperature"] = float(temperature)
    return model


def register_and_gate(
    cfg: Config, tracker: Tracker, model_dir: Path, evaluated: SavedPredictions
) -> dict[str, Any]:
    """Register (or reuse) the version, run the gate once for it, and describe the outcome."""
    name = cfg.registry.model_name
    predictions = artifacts.predictions_path(cfg.paths.evaluation)
    experiment = experiment_name() if in_temp_copy() else None
    registered = log_and_register(
        tracker, name, model_dir, predictions, example_images(cfg), experiment=experiment
    )
    client = tracker.store.client
    with gate_lock(tracker.store):
        decision = registered.decision
        if decision is None:  # a retried registration keeps the decision it already has
            decision = decide(cfg, tracker.store, registered, evaluated)
            if experiment is None:
                registered = apply_decision(client, registered, decision)
            else:  # a sweep point never becomes champion by accident
                decision = experiment_decision(experiment, decision)
                record_experiment_decision(client, registered, decision)
        current = aliases(client, name)
    metrics = artifacts.read_metrics(cfg.paths.evaluation)
    describe_version(client, registered, metrics, decision, run_tags_of(cfg))
    tracker.set_tags({"thawline.registered_version": registered.version})
    tracker.log_headline(
        {f"test_{k}": v for k, v in metrics.items() if k.endswith("accuracy")},
        {
            "thawline.chosen_model": evaluated.meta["model"],
            "thawline.registered_version": registered.version,
            "thawline.champion_version": current.get("champion"),
            "thawline.gate": "promoted" if decision.get("promote") else "champion stays",
            "thawline.gate_reason": decision.get("reason"),
            "thawline.experiment": experiment,
        },
    )
    return {
        "registered": True,
        "model_name": name,
        "version": registered.version,
        "model_uri": registered.uri,
        "run_id": registered.run_id,
        "experiment_id": tracker.store.experiment_id,  # the report links the MLflow UI to it
        "tracking_uri": tracker.store.uri,
        "reused": registered.reused,
        "aliases": current,
        "decision": decision,
    }


def decide(
    cfg: Config, store: Store, registered: Registered, ours: SavedPredictions
) -> dict[str, Any]:
    """The gate for ``registered`` against the current champion, as a JSON-able record."""
    margin, alpha = cfg.registry.margin, cfg.registry.alpha
    accuracy = float(ours.correct.mean())
    rescored_on: dict[str, bool] = {}
    champion = current_champion(store.client, registered.name)
    if champion is None:
        decision = champion_gate(ours.correct, None, margin, alpha, same_split=True)
    elif champion.version == registered.version:
        reason = f"version {champion.version} is already champion (a repeated registration)"
        decision = Decision(True, reason, accuracy, **_limits(cfg))
    else:
        with tempfile.TemporaryDirectory(prefix="thawline-champion-") as tmp:
            path = download_predictions(store, champion, Path(tmp))
            theirs = load_predictions(path) if path is not None else None
        split = ours.meta["split_fingerprint"]
        if theirs is not None and theirs.meta["split_fingerprint"] == split:
            decision = champion_gate(ours.correct, theirs.correct, margin, alpha, True)
        else:  # new data since (or no logged predictions): score the champion on these images
            try:
                rescored = rescore(cfg, store, champion, ours)
            except ThawlineError as err:
                reason = f"not compared: the champion could not be scored on this split ({err})"
                decision = Decision(False, reason + "; champion stays", accuracy, **_limits(cfg))
            else:
                decision = champion_gate(ours.correct, rescored, margin, alpha, True)
                rescored_on = {"champion_rescored": True}
    return (
        decision.as_dict()
        | rescored_on
        | {
            "champion_version": champion.version if champion else None,
            "split": ours.meta["split"],
            "split_fingerprint": ours.meta["split_fingerprint"],
        }
    )


def experiment_decision(experiment: str, decision: dict[str, Any]) -> dict[str, Any]:
    """The gate's verdict for a version a DVC experiment registered: recorded, never applied.

    Experiments in temp copies (``dvc exp run --temp``, queued sweeps) register versions tagged
    with their name; only ``dvc repro`` or a flow in the workspace moves ``champion``.
    """
    said = decision["reason"]
    return decision | {
        "promote": False,
        "would_promote": decision["promote"],
        "reason": f"experiment '{experiment}' ran in a DVC temp copy: not applied ({said})",
    }


def rescore(cfg: Config, store: Store, champion: Registered, ours: SavedPredictions) -> np.ndarray:
    """Whether the champion gets each image of the challenger's evaluated split right.

    After new data the split fingerprints differ, and the champion's logged predictions cannot
    be paired with the challenger's; its model can. Splits are carved by content hash, so these
    images were never in the champion's training split.

    Raises:
        RegistryError: The champion cannot be loaded, or knows other classes than these.
    """
    data = PreparedStore(cfg.paths.prepared)
    split = data.load(ours.meta["split"])
    if not np.array_equal(split.labels.numpy(), ours.labels):
        raise RegistryError(f"{cfg.paths.prepared}: rows differ from the evaluated predictions")
    with mlflow_errors():
        model = load_model(champion.uri, store.uri)
    if list(model.classes) != list(data.classes):
        raise RegistryError(
            f"champion version {champion.version} knows the classes {model.classes}, this data "
            f"{data.classes}"
        )
    log.info("register: scoring champion version %d on the %d images of this %s split",
             champion.version, len(ours.labels), ours.meta["split"])  # fmt: skip
    pred = []
    for start in range(0, len(ours.labels), RESCORE_CHUNK):
        if split.texts is not None:
            chunk = split.texts[start : start + RESCORE_CHUNK]
        else:
            chunk = list(split.images[start : start + RESCORE_CHUNK].permute(0, 2, 3, 1).numpy())
        table = model.predict(chunk)["probabilities"]
        pred += [int(np.argmax(row)) for row in table]
    return np.asarray(pred) == ours.labels


def example_images(cfg: Config, count: int = EXAMPLES) -> list[bytes] | list[str]:
    """The first test images as PNG files (or documents, their first 500 characters): the
    registered model's input example."""
    store = PreparedStore(cfg.paths.prepared)
    split = "test" if "test" in store.splits else store.splits[0]
    data = store.load(split)
    if data.texts is not None:
        return [text[:500] for text in data.texts[:count]]
    return [png_bytes(image) for image in data.images[:count]]


def png_bytes(image: torch.Tensor) -> bytes:
    """A uint8 ``[3, H, W]`` tensor as a PNG file."""
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


def _limits(cfg: Config) -> dict[str, float]:
    return {"margin": cfg.registry.margin, "alpha": cfg.registry.alpha}
