"""Shared fixtures: one small real Fashion-MNIST config with every path under ``tmp_path``.

Tests use tiny real data (a few hundred Fashion-MNIST images, 32 px inputs) and the real
libraries; nothing under test is mocked.
"""

from __future__ import annotations

import gzip
import json
import os
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from thawline.config import Config, config_from_dict, dump_config
from thawline.data.image_sources import DEBIAN_FASHION_MNIST

REPO = Path(__file__).resolve().parents[1]


def makefile_overrides(variable: str) -> list[str]:
    """The ``-S key=value`` arguments a Makefile variable holds (``make full``'s FAST_PROFILE)."""
    text = (REPO / "Makefile").read_text().replace("\\\n", " ")
    line = next(x for x in text.splitlines() if x.startswith(f"{variable} :="))
    words = shlex.split(line.split(":=", 1)[1])
    assert words[::2] == ["-S"] * (len(words) // 2), words  # nothing but -S key=value pairs
    return words


def pytest_configure(config):
    """Under pytest-xdist (``make test`` runs a worker per CPU), each worker and the processes
    it starts get their share of the cores: two torch processes with a thread per core each
    slow each other down 3-5x on a 2-core machine."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)  # inherited by stage and server processes
        torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def no_pickle():
    """No model load in the tests (or in servers they start) may unpickle: MLflow refuses to."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
        yield


@pytest.fixture(scope="session", autouse=True)
def own_user_cache(tmp_path_factory):
    """The tests' own $THAWLINE_CACHE (and their processes'): a precision measured on tiny
    models, or with a worker's share of the cores, must never decide a user's real run."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("THAWLINE_CACHE", str(tmp_path_factory.mktemp("user-cache")))
        yield


@pytest.fixture(scope="module", autouse=True)
def keep_tracking_uri():
    """Connecting sets $MLFLOW_TRACKING_URI (MLflow does, for subprocesses); undo that after
    each test module so no module's store leaks into the next."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


def shipped_params() -> dict:
    """The params.yaml users run, as a plain dict: tests start from it, never from code
    defaults (tests/unit/test_config.py holds the code's defaults to it)."""
    return yaml.safe_load((REPO / "params.yaml").read_text())


def small_config(tmp: Path, **sections) -> Config:
    """The shipped params.yaml for ~20 images per class and split, 32 px inputs, every path
    under ``tmp``."""
    raw = shipped_params()
    # Every output under tmp (never the repo's data/, models/, reports/ from a real run).
    raw["paths"] = {name: str(tmp / value) for name, value in raw["paths"].items()}
    raw["paths"] |= {"prepared": str(tmp / "prepared"), "features": str(tmp / "features")}
    raw["prepare"]["limit_per_class"] = 20
    raw["extract"] |= {"image_size": 32, "batch_size": 32}
    # The ONNX export takes ~10 s a model; tests/integration/test_export.py, test_register.py
    # and the text pipeline test it, the others register without it. Likewise the CAMs.
    raw["registry"]["onnx"] = False
    raw["evaluate"]["cams"] = False  # Grad-CAM: tests/integration/test_evaluate.py turns it on
    for name, values in sections.items():
        if isinstance(values, dict):
            raw.setdefault(name, {}).update(values)
        else:
            raw[name] = values
    return config_from_dict(raw)


def stage_command(cfg: Config, base: Path, name: str) -> list[str]:
    """``thawline stage <name>`` as a process of its own, on ``cfg`` written to ``base``."""
    params = base / f"params-{name}.yaml"
    params.write_text(json.dumps(dump_config(cfg)))  # JSON is YAML
    return [sys.executable, "-m", "thawline", "stage", name, "-q", "-p", str(params)]


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return small_config(tmp_path)


@pytest.fixture(scope="session")
def prepared_small(tmp_path_factory) -> Config:
    """One prepared store shared by tests that only read it."""
    from thawline.stages import prepare

    tmp = tmp_path_factory.mktemp("shared")
    config = small_config(tmp)
    prepare.run(config, progress=False)
    return config


@pytest.fixture(scope="session")
def finetune_data(prepared_small):
    """96 training and 48 validation images for the tiny fine-tunes of tests/finetune_support."""
    from tests.finetune_support import tiny_data

    return tiny_data(prepared_small.paths.prepared)


def write_folder(root: Path, images: np.ndarray, labels: np.ndarray, classes=("a", "b", "c")):
    """An image folder: ``root/<class>/<index>.png``, class ``classes[label % len(classes)]``."""
    for i, (img, y) in enumerate(zip(images, labels, strict=True)):
        folder = root / classes[int(y) % len(classes)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:04d}.png")


@pytest.fixture(scope="session")
def fashion_mnist_arrays() -> tuple:
    """The first 200 training images and labels of Fashion-MNIST, as numpy arrays."""
    from thawline.data.image_sources import read_idx

    images = read_idx(DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz")[:200]
    labels = read_idx(DEBIAN_FASHION_MNIST / "train-labels-idx1-ubyte.gz")[:200]
    return images, labels


@pytest.fixture
def torchvision_fashion_root(tmp_path: Path) -> Path:
    """Debian's Fashion-MNIST files laid out as torchvision expects (root/FashionMNIST/raw)."""
    raw = tmp_path / "tv" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in DEBIAN_FASHION_MNIST.glob("*.gz"):
        shutil.copy(gz, raw / gz.name)
        with gzip.open(gz) as src, open(raw / gz.stem, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return tmp_path / "tv"


@pytest.fixture(scope="session")
def registry_pipeline(prepared_small, tmp_path_factory):
    """Features and four fitted heads for the registry tests (tests/registry_support.py)."""
    from tests.registry_support import make_pipeline

    return make_pipeline(prepared_small, tmp_path_factory.mktemp("register"))


@pytest.fixture(scope="session")
def registry_scenario(registry_pipeline):
    """Three registrations: medium (champion), bad (refused), good (moves the champion)."""
    from tests.registry_support import register_scenario

    return register_scenario(registry_pipeline)
