"""A registry scenario for tests: heads fitted on cached features, evaluation files written as
the evaluate stage writes them, and helpers for ``mlflow models serve``.

The fixtures built from it (``registry_pipeline``, ``registry_scenario`` in tests/conftest.py) are
shared by tests/integration/test_register.py and tests/reliability/test_registry.py.
"""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from pathlib import Path

import torch
from mlflow import MlflowClient
from torch.nn import functional as F

from tests.conftest import small_config
from tests.servers import VENV_BIN, background_server, free_port, server_env
from thawline.data.store import read_manifest
from thawline.evaluation.predictions import PREDICTIONS, save_predictions
from thawline.features.cache import load_features, read_cache_manifest
from thawline.files import read_json, write_json
from thawline.models.head import Head
from thawline.models.storage import save_head
from thawline.stages import extract, register

NAME = "fmnist"


def fit(features: torch.Tensor, labels: torch.Tensor, classes: int, epochs: int) -> Head:
    """A linear head, full-batch AdamW; ``epochs=0`` leaves it at its random init."""
    torch.manual_seed(0)
    head = Head(features.shape[1], classes)
    head.set_standardisation(features)
    opt = torch.optim.AdamW(head.parameters(), lr=0.01, weight_decay=1e-4)
    for _ in range(epochs):
        opt.zero_grad()
        F.cross_entropy(head(features), labels).backward()
        opt.step()
    return head.eval()


class Pipeline:
    """One pipeline's paths in tmp; ``use(name)`` puts a head and its evaluation in place."""

    def __init__(self, cfg, heads):
        self.cfg = cfg
        self.heads = heads

    def use(self, name: str, cfg=None):
        cfg = cfg or self.cfg
        head = self.heads[name]
        fingerprint = read_cache_manifest(cfg.paths.features)["fingerprint"]
        save_head(head, cfg.paths.head, {"feature_fingerprint": fingerprint})
        features, labels = load_features(cfg.paths.features, "test")
        with torch.no_grad():
            probs = torch.softmax(head(features), dim=1)
        pred = probs.argmax(dim=1)
        split = read_manifest(cfg.paths.prepared)["splits"]["test"]
        meta = {"split": "test", "split_fingerprint": split["fingerprint"], "model": "head_only"}
        save_predictions(cfg.paths.evaluation / PREDICTIONS, labels, pred, probs, meta)
        accuracy = (pred == labels).float().mean().item()
        write_json(cfg.paths.evaluation / "metrics.json", {"accuracy": accuracy})
        return accuracy

    @property
    def fingerprint(self) -> str:
        return read_cache_manifest(self.cfg.paths.features)["fingerprint"]


def pipeline_config(base: Path, prepared: Path, features: Path, store: Path, name: str = NAME):
    return small_config(
        base,
        paths={
            "prepared": str(prepared),
            "features": str(features),
            "head": str(base / "head"),
            "model": str(base / "model"),
            "evaluation": str(base / "evaluation"),
            "registration": str(base / "registration.json"),
        },
        tracking={"uri": f"sqlite:///{store / 'mlflow.db'}", "artifacts": str(store / "mlruns")},
        registry={"model_name": name},
        # 64 px and hooked layers: about 0.8 test accuracy, and the model must rebuild the hooks
        extract={"image_size": 64, "layers": "auto"},
    )


def make_pipeline(prepared_small, tmp: Path) -> Pipeline:
    """Features at 64 px in ``tmp`` and four heads fitted on them (about 0.5 to 0.8 accurate)."""
    cfg = pipeline_config(tmp, prepared_small.paths.prepared, tmp / "features", tmp)
    extract.run(cfg, progress=False)
    x, y = load_features(cfg.paths.features, "train")
    half = y < 5  # a head that never saw classes 5-9 tops out near 50%
    heads = {
        "medium": fit(x[half], y[half], 10, epochs=60),
        "bad": fit(x, y, 10, epochs=0),
        "good": fit(x, y, 10, epochs=60),
        "good_again": fit(x, y, 10, epochs=59),  # another good model (other weights)
    }
    return Pipeline(cfg, heads)


def register_scenario(pipeline: Pipeline):
    """Three pipeline runs: medium (first: champion), bad (challenger), good (moves champion)."""
    records, accuracies = {}, {}
    for name in ("medium", "bad", "good"):
        accuracies[name] = pipeline.use(name)
        result = register.run(pipeline.cfg, progress=False)
        records[name] = read_json(result.outputs["registration"])
    return records, accuracies


def client(cfg) -> MlflowClient:
    return MlflowClient(tracking_uri=cfg.tracking.uri)


@contextlib.contextmanager
def model_server(model_uri: str, tracking_uri: str, folder: Path):
    """``mlflow models serve`` on a free loopback port; yields its base URL."""
    with served_model(model_uri, tracking_uri, folder) as (base, _):
        yield base


@contextlib.contextmanager
def served_model(model_uri: str, tracking_uri: str, folder: Path):
    """``mlflow models serve`` on a free loopback port; yields its base URL and its process."""
    port = free_port()
    command = [str(VENV_BIN / "mlflow"), "models", "serve", "-m", model_uri,
               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    env = server_env(MLFLOW_TRACKING_URI=tracking_uri)
    with background_server(command, f"{base}/ping", folder, env) as process:
        yield base, process


def invoke(base: str, images: list) -> tuple[int, dict]:
    """POST images as MLflow's ``dataframe_split`` JSON; returns status and parsed body."""
    return post(base, {"dataframe_split": {"columns": ["image"], "data": [[i] for i in images]}})


def post(base: str, payload: dict) -> tuple[int, dict]:
    """POST any JSON payload to ``/invocations``; returns status and parsed body."""
    request = urllib.request.Request(
        f"{base}/invocations", json.dumps(payload).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")
