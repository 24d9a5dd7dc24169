"""The layer contracts of pyproject.toml (import-linter): they hold, and they would catch a module
that imports upwards. ``make test`` runs ``lint-imports`` on the tree itself too."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

LINT = Path(sys.executable).parent / "lint-imports"


def lint(root: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": f"{root / 'src'}{os.pathsep}{root}"}
    return subprocess.run([str(LINT)], cwd=root, env=env, capture_output=True, text=True)


def test_an_upward_import_breaks_the_layers_contract(tmp_path):
    assert lint(REPO).returncode == 0
    shutil.copytree(REPO / "src" / "thawline", tmp_path / "src" / "thawline",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    shutil.copytree(REPO / "pipelines", tmp_path / "pipelines",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    head = tmp_path / "src" / "thawline" / "models" / "head.py"
    head.write_text(head.read_text() + "\nimport thawline.tracking.runs  # upward, on purpose\n")
    broken = lint(tmp_path)
    assert broken.returncode != 0
    assert "thawline.models is not allowed to import thawline.tracking" in broken.stdout
