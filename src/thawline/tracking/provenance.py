"""Where a run comes from: the flattened config, the git commit and the data fingerprints."""

from __future__ import annotations

import contextlib
import json
import subprocess
from typing import Any

from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT

from thawline.config import Config, dump_config
from thawline.data.store import PreparedStore
from thawline.errors import ThawlineError
from thawline.features.cache import FeatureCache
from thawline.files import sha256_json


def pipeline_key(cfg: Config) -> str:
    """What identifies one pipeline execution: the config's content and the git commit."""
    return sha256_json({"config": dump_config(cfg), "commit": git_commit()})[:16]


def run_tags(cfg: Config) -> dict[str, str]:
    """Provenance tags: backbone, git commit and the data and feature fingerprints present
    (read through the stores that own those formats)."""
    tags = {"thawline.backbone": cfg.backbone.name}
    if commit := git_commit():
        tags |= {"thawline.git_commit": commit, MLFLOW_GIT_COMMIT: commit}
    for tag, owner, folder in (
        ("thawline.data_fingerprint", PreparedStore, cfg.paths.prepared),
        ("thawline.feature_fingerprint", FeatureCache, cfg.paths.features),
    ):
        with contextlib.suppress(ThawlineError, OSError, ValueError, KeyError, TypeError):
            tags[tag] = str(owner(folder).fingerprint)
    return tags


def git_commit() -> str | None:
    """HEAD of the git repository around the working directory, or None outside one."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def read_params(cfg: Config, reads: set[str]) -> dict[str, str]:
    """The flattened params named in ``reads`` (``section.key``; a list-valued key as a whole)."""
    flat = flatten(dump_config(cfg))
    return {k: v for k, v in flat.items() if k in reads or k.rpartition(".")[0] in reads}


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config to MLflow params: ``{"head": {"lr": 0.001}}`` -> ``{"head.lr": "0.001"}``."""
    flat: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(value)
    return flat
