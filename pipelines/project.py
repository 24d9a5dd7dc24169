"""Where a flow works: the DVC project of a params file, entered for the flow's duration."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from thawline.config import Config, ConfigError, load_config, write_overrides


@contextlib.contextmanager
def project(params: str, overrides: list[str] | None = None) -> Iterator[tuple[Path, Config]]:
    """Validate the config (and write ``overrides`` into it, as ``dvc exp run -S`` does), then
    run the block in the params file's folder, the DVC project, so that the config's relative
    paths and the default ``sqlite:///mlflow.db`` mean what they mean to ``dvc repro``.

    Yields:
        ``(project folder, config)``.

    Raises:
        ConfigError: Before anything runs or is written.
    """
    path = Path(params).resolve()
    cfg = write_overrides(path, overrides) if overrides else load_config(path)
    repo = path.parent
    if path.name != "params.yaml" or not (repo / "dvc.yaml").is_file():
        raise ConfigError(
            f"{path}: the flows run the DVC project's params.yaml (beside its dvc.yaml); "
            "pass --params <project>/params.yaml"
        )
    before = Path.cwd()
    os.chdir(repo)
    try:
        yield repo, cfg
    finally:
        os.chdir(before)
