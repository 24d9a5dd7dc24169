"""The model registry: log the complete model, register versions, move aliases.

Every registered version gets the alias ``challenger``; ``champion`` moves only through the gate
(:func:`apply_decision`). thawline records the champion's version as a registered-model tag, so
when the alias disappears (its version was deleted) it raises instead of falling back to the
latest version. A version is identified by the sha256 of its weights and spec, so registering the
same model again (a retried stage) reuses its version.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from thawline.errors import RegistryError
from thawline.files import read_json
from thawline.models.storage import MODEL_SPEC as SPEC
from thawline.models.storage import MODEL_WEIGHTS as WEIGHTS
from thawline.tracking.aliases import (
    CHALLENGER,
    CHAMPION,
    TAG_CHAMPION,
    alias_version,
    dangling_alias_message,
    recorded_champion,
)
from thawline.tracking.provenance import flatten
from thawline.tracking.pyfunc import input_example, model_signature
from thawline.tracking.store import Store, relocated, store_lock, with_retry
from thawline.tracking.tracker import Tracker

TAG_DIGEST = "thawline.model_sha256"
TAG_DECISION = "thawline.gate"  # the whole decision as JSON; thawline.gate.<field> for the UI
TAG_EXPERIMENT = "thawline.experiment"  # a version a DVC experiment registered (no alias)
PREDICTIONS_DIR = "evaluation"
MODEL_CODE = Path(__file__).with_name("model_code.py")
REQUIREMENTS = ("thawline", "mlflow", "torch", "torchvision", "timm", "safetensors", "pillow",
                "transformers", "tokenizers")  # fmt: skip


@dataclass(frozen=True)
class Registered:
    """A registered model version, as thawline sees it."""

    name: str
    version: int
    run_id: str
    tags: dict[str, str]
    reused: bool = False

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    @property
    def decision(self) -> dict[str, Any] | None:
        """The gate decision recorded on this version, if the gate already ran for it."""
        recorded = self.tags.get(TAG_DECISION)
        return json.loads(recorded) if recorded else None


def log_and_register(
    tracker: Tracker,
    name: str,
    model_dir: Path,
    predictions: Path,
    examples: list[bytes],
    experiment: str | None = None,
) -> Registered:
    """Log a saved thawline model as an MLflow pyfunc model and register a new version.

    The version gets the alias ``challenger``; a DVC experiment's (``experiment``: run in a
    temp copy) gets the tag ``thawline.experiment`` instead and moves no alias. The predictions
    file is logged with the run, so a later gate can pair its rows with a newer challenger's.

    Args:
        tracker: The register stage's run.
        name: The registered model's name.
        model_dir: A folder written by ``save_classifier``.
        predictions: The evaluated ``predictions.safetensors`` of this model.
        examples: A few encoded image files for the input example.

    Returns:
        The new version, or the existing one for the same weights (``reused=True``).
    """
    client = tracker.store.client
    digest = model_digest(model_dir)
    if found := find_version(client, name, digest):  # a retry: the version exists already
        if experiment is None:
            with_retry(lambda: client.set_registered_model_alias(name, CHALLENGER, found.version))
        return found
    spec = read_json(model_dir / SPEC)
    described = describe(spec)
    tracker.set_tags({f"thawline.model.{k}": v for k, v in described.items()})
    tracker.log_artifact(predictions, PREDICTIONS_DIR)
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=str(MODEL_CODE),  # models from code: no pickle when loading
        artifacts={"model": str(model_dir)},
        signature=model_signature("text" if examples and isinstance(examples[0], str) else "image"),
        input_example=input_example(examples),
        pip_requirements=requirements(),
        metadata={"thawline": {k: spec[k] for k in ("classes", "image_size", "preprocess")}},
        params=described,
    )
    tags = {TAG_DIGEST: digest, **{f"thawline.{k}": v for k, v in described.items()}}
    if experiment is not None:
        tags[TAG_EXPERIMENT] = experiment
    created = with_retry(lambda: mlflow.register_model(info.model_uri, name, tags=tags))
    if experiment is None:
        with_retry(lambda: client.set_registered_model_alias(name, CHALLENGER, created.version))
    return _registered(created)


def record_experiment_decision(
    client: MlflowClient, registered: Registered, decision: dict[str, Any]
) -> None:
    """What the gate said about an experiment's version, under a tag of its own: the version's
    gate decision stays unset, so registering the same model from the workspace decides again
    (and may promote it)."""
    number = str(registered.version)
    with_retry(lambda: client.set_model_version_tag(
        registered.name, number, f"{TAG_EXPERIMENT}_gate", json.dumps(decision)))  # fmt: skip


CALIBRATION_TAGS = ("ece", "uncalibrated_ece", "loss", "uncalibrated_loss", "brier",
                    "uncalibrated_brier")  # fmt: skip


def describe_version(
    client: MlflowClient,
    registered: Registered,
    metrics: dict[str, float],
    decision: dict[str, Any],
    provenance: dict[str, str],
) -> None:
    """A Markdown description for the registry page: test metrics, the gate's decision with its
    numbers, the backbone and the data and feature fingerprints."""
    lines = ["### Test metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in metrics.items() if isinstance(v, int | float)]
    verdict = "promoted to champion" if decision.get("promote") else "not promoted"
    lines += ["", f"### Champion gate: {verdict}", "", str(decision.get("reason", "")), ""]
    numbers = ("challenger_accuracy", "champion_accuracy", "difference", "b", "c", "p_value",
               "margin", "alpha", "champion_version")  # fmt: skip
    lines += [f"- {k}: {decision[k]}" for k in numbers if decision.get(k) is not None]
    lines += ["", "### Provenance", ""]
    lines += [f"- {k.removeprefix('thawline.')}: `{v}`" for k, v in sorted(provenance.items())
              if k.startswith("thawline.")]  # fmt: skip
    text = "\n".join(lines) + "\n"
    with_retry(lambda: client.update_model_version(
        registered.name, str(registered.version), description=text))  # fmt: skip
    for key in CALIBRATION_TAGS:  # the registry page's filterable calibration, before and after
        if key in metrics:
            with_retry(lambda k=key: client.set_model_version_tag(
                registered.name, str(registered.version), f"thawline.test_{k}",
                f"{metrics[k]:.6g}"))  # fmt: skip


def find_version(client: MlflowClient, name: str, digest: str) -> Registered | None:
    """The version of ``name`` registered from the same weights, if any."""
    query = f"name = '{_quote(name)}' and tags.`{TAG_DIGEST}` = '{digest}'"
    found = with_retry(lambda: client.search_model_versions(query, order_by=["version_number"]))
    if not found:
        return None
    mv = with_retry(lambda: client.get_model_version(name, found[0].version))
    return _registered(mv, reused=True)


def current_champion(client: MlflowClient, name: str) -> Registered | None:
    """The version behind ``champion``; None only if thawline never named a champion.

    Raises:
        RegistryError: The alias is gone (its version was deleted, or the alias removed) although
            thawline had set it: it never falls back to the latest version.
    """
    number = alias_version(client, name, CHAMPION)
    if number is None:
        if recorded := recorded_champion(client, name):
            raise RegistryError(dangling_alias_message(client, name, CHAMPION, recorded))
        return None
    mv = with_retry(lambda: client.get_model_version(name, number))
    return _registered(mv)


@contextlib.contextmanager
def gate_lock(store: Store) -> Iterator[None]:
    """Hold while reading the champion, deciding and moving aliases (one gate at a time)."""
    with store_lock(store.uri):
        yield


def download_predictions(store: Store, registered: Registered, folder: Path) -> Path | None:
    """The predictions file logged with a version's run (found again if the project moved), or
    None when it has none."""
    try:
        run = with_retry(lambda: store.client.get_run(registered.run_id))
        source = f"{run.info.artifact_uri}/{PREDICTIONS_DIR}/predictions.safetensors"
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=relocated(store.client, source, run.info.experiment_id),
            dst_path=str(folder),
            tracking_uri=store.uri,
        )
    except (MlflowException, OSError, RegistryError):
        return None
    return Path(local)


def apply_decision(
    client: MlflowClient, registered: Registered, decision: dict[str, Any]
) -> Registered:
    """Move ``champion`` if the decision promotes, then record the decision as version tags.

    The alias moves before the tags are written: a run killed in between finds no recorded
    decision on retry and decides again (now as the champion itself).
    """
    name, number = registered.name, str(registered.version)
    if decision["promote"]:
        with_retry(lambda: client.set_registered_model_alias(name, CHAMPION, number))
        with_retry(lambda: client.set_registered_model_tag(name, TAG_CHAMPION, number))
    tags = {f"{TAG_DECISION}.{k}": "" if v is None else str(v) for k, v in decision.items()}
    tags[TAG_DECISION] = json.dumps(decision)
    for key, value in tags.items():
        with_retry(lambda k=key, v=value: client.set_model_version_tag(name, number, k, v))
    return _registered(with_retry(lambda: client.get_model_version(name, number)))


def model_digest(model_dir: Path) -> str:
    """sha256 over the model's weights and spec: equal digests mean the same model."""
    h = hashlib.sha256()
    for name in (WEIGHTS, SPEC):
        h.update(name.encode())
        h.update((model_dir / name).read_bytes())
    return h.hexdigest()


def describe(spec: dict[str, Any]) -> dict[str, str]:
    """The class map and preprocessing of a model spec as flat strings (params and tags)."""
    return flatten(
        {
            "backbone": spec["backbone"],
            "layers": spec["layers"],
            "classes": spec["classes"],
            "image_size": spec["image_size"],
            "preprocess": spec["preprocess"],
            "temperature": spec.get("temperature", 1.0),
        }
    )


def requirements() -> list[str]:
    """Pinned requirements of the pyfunc (thawline itself must be installed where it loads)."""
    pins = []
    for package in REQUIREMENTS:
        with contextlib.suppress(PackageNotFoundError):
            pins.append(f"{package}=={version(package).split('+')[0]}")
    return pins


def _registered(mv: ModelVersion, reused: bool = False) -> Registered:
    return Registered(mv.name, int(mv.version), mv.run_id, dict(mv.tags or {}), reused)


def _quote(text: str) -> str:
    return text.replace("'", "\\'")
