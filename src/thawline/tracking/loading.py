"""Loading a model for prediction: a registry alias or version, a run, or a model folder.

An alias resolves to its version number first, so a missing alias is an error that says what
happened; nothing ever falls back to the latest version.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
from mlflow import MlflowClient

from thawline.errors import RegistryError
from thawline.models.classifier import Classifier
from thawline.models.storage import MODEL_SPEC as SPEC
from thawline.models.storage import MODEL_WEIGHTS as WEIGHTS
from thawline.models.storage import load_classifier
from thawline.models.tta import check_tta
from thawline.tracking.aliases import (
    CHAMPION,
    alias_version,
    dangling_alias_message,
    recorded_champion,
)
from thawline.tracking.pyfunc import classify
from thawline.tracking.store import client_for, relocated, sqlite_path
from thawline.tracking.store import tracking_uri as default_tracking_uri


@dataclass
class Predictor:
    """A loaded model: ``predict(values)`` takes a list of images in any accepted form (or of
    documents, for a text model)."""

    classes: list[str]
    source: str
    predict_fn: Callable[[list[Any], str], pd.DataFrame]
    modality: str = "image"

    def predict(self, values: list[Any], tta: str = "none") -> pd.DataFrame:
        """``label``, ``probability`` and ``probabilities`` (class order) per image, averaged
        over the views of ``tta`` (models/tta.py; image models only).

        Raises:
            TTAError: An unknown ``tta``, or TTA asked of a text model.
        """
        check_tta(tta, self.modality)
        return self.predict_fn(values, tta)


def load_model(uri: str, tracking_uri: str | None = None) -> Predictor:
    """Load a model for prediction.

    Args:
        uri: ``models:/<name>@<alias>``, ``models:/<name>/<version>``, ``runs:/...``, an MLflow
            model folder, or a thawline model folder (``model.json`` + ``model.safetensors``).
        tracking_uri: The store for ``models:/`` and ``runs:/`` URIs (default: as
            :func:`thawline.tracking.store.tracking_uri`).

    Raises:
        RegistryError: The alias does not exist (e.g. its version was deleted); never falls
            back to another version.
    """
    folder = Path(uri).expanduser()
    if (folder / SPEC).is_file() and (folder / WEIGHTS).is_file():
        model = load_classifier(folder)
        if model.modality == "text":
            from thawline.tracking.text_pyfunc import classify_texts

            return Predictor(model.classes, str(folder),
                             lambda values, _: classify_texts(model, values), "text")  # fmt: skip
        return Predictor(
            model.classes, str(folder), lambda values, tta: classify(model, values, tta)
        )
    resolved, location = _locate(uri, tracking_uri)
    pyfunc = mlflow.pyfunc.load_model(location)
    meta = (pyfunc.metadata.metadata or {}).get("thawline", {})
    if not meta.get("classes"):
        raise RegistryError(f"{uri}: not a thawline model (its MLmodel has no class list)")
    modality = "text" if meta.get("preprocess", {}).get("kind") == "text" else "image"
    column = "text" if modality == "text" else "image"
    signature = pyfunc.metadata.signature
    takes_tta = (
        signature is not None
        and signature.params is not None
        and any(spec.name == "tta" for spec in signature.params.params)
    )

    def predict(values: list[Any], tta: str) -> pd.DataFrame:
        if tta == "none":
            return pyfunc.predict(pd.DataFrame({column: values}))
        if not takes_tta:  # MLflow would drop the param with a warning: say so instead
            raise RegistryError(
                f"{resolved}: registered before thawline models took a 'tta' param; register "
                "the model again (thawline stage register) or predict without --tta"
            )
        return pyfunc.predict(pd.DataFrame({column: values}), params={"tta": tta})

    return Predictor(list(meta["classes"]), resolved, predict, modality)


def load_classifier_from(uri: str, tracking_uri: str | None = None) -> Classifier:
    """The :class:`Classifier` behind a URI or folder (as :func:`load_model` takes), for tools
    that need the network itself (ONNX export, class-activation maps)."""
    folder = Path(uri).expanduser()
    if (folder / SPEC).is_file() and (folder / WEIGHTS).is_file():
        return load_classifier(folder)
    wrapped = mlflow.pyfunc.load_model(_locate(uri, tracking_uri)[1]).unwrap_python_model()
    if not hasattr(wrapped, "classifier"):
        raise RegistryError(f"{uri}: not a thawline model")
    return wrapped.classifier


def _locate(uri: str, tracking_uri: str | None) -> tuple[str, str]:
    """``(resolved URI, where its files are)``: an alias becomes its version number."""
    if not uri.startswith(("models:/", "runs:/")):
        if "://" not in uri and not Path(uri).expanduser().exists():
            raise RegistryError(
                f"{uri}: no such model folder; give a thawline model folder (model.json + "
                "model.safetensors, e.g. models/model), an MLflow model folder, or "
                "models:/<name>@<alias>"
            )
        return uri, uri
    store = tracking_uri or default_tracking_uri()
    database = sqlite_path(store)
    if database is not None and not database.is_file():  # never create an empty store
        raise RegistryError(
            f"{uri}: there is no MLflow store at {database}; run the pipeline first, or point "
            "MLFLOW_TRACKING_URI (or --tracking-uri) at the store that holds the model"
        )
    client = client_for(store)
    resolved = _resolve_alias(client, uri)
    return resolved, _version_location(client, resolved) or resolved


def _version_location(client: MlflowClient, uri: str) -> str | None:
    """Where the files of ``models:/name/<version>`` are, found again if the project moved."""
    match = re.fullmatch(r"models:/([^/@]+)/(\d+)", uri)
    if not match:
        return None
    name, number = match.groups()
    source = client.get_model_version_download_uri(name, number)
    experiment = client.get_run(client.get_model_version(name, number).run_id).info.experiment_id
    return relocated(client, source, experiment)


def _resolve_alias(client: MlflowClient, uri: str) -> str:
    """``models:/name@alias`` to ``models:/name/<version>``, refusing a missing alias."""
    match = re.fullmatch(r"models:/([^/@]+)@([^/]+)", uri)
    if not match:
        return uri
    name, alias = match.groups()
    number = alias_version(client, name, alias)
    if number is None:
        recorded = recorded_champion(client, name) if alias == CHAMPION else None
        if recorded:
            raise RegistryError(dangling_alias_message(client, name, alias, recorded))
        raise RegistryError(
            f"{uri}: no registered model '{name}' with an alias '{alias}' in "
            f"{client.tracking_uri}; run the register stage, or point MLFLOW_TRACKING_URI "
            "(or --tracking-uri) at the store that holds it"
        )
    return f"models:/{name}/{number}"
