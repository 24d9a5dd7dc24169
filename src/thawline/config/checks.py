"""Checks of names the config refers to: that a backbone and a torchvision dataset exist.

Answering needs timm or torchvision, and importing them (and torch) takes seconds, which made
``thawline config`` take 4-8 s. A name once found is remembered per library version in a small
file under the user's cache folder, so later checks of the same name import nothing.
"""

from __future__ import annotations

import json
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from thawline.files import user_cache_folder


def check_backbone_name(name: str) -> None:
    library, _, model = name.partition(":")
    if library not in ("timm", "torchvision", "hf") or not model:
        raise ValueError(
            f"backbone.name: '{name}' must be 'timm:<model>', 'torchvision:<model>' or "
            "'hf:<hub name or local folder>', e.g. timm:tf_efficientnet_lite0, "
            "torchvision:resnet18 or hf:sentence-transformers/all-MiniLM-L6-v2"
        )
    if library == "hf":  # a hub name or a folder: the adapter says what it cannot load
        return
    if _known(library, name):
        return
    if library == "timm":
        import timm

        if not timm.is_model(model):
            close = timm.list_models(f"*{model.split('.')[0][:6]}*")[:5]
            raise ValueError(f"backbone.name: timm has no model '{model}'; similar: {close}")
    else:
        import torchvision

        known = torchvision.models.list_models(module=torchvision.models)
        if model not in known:
            close = [m for m in known if m.startswith(model[:3])][:5]
            raise ValueError(
                f"backbone.name: torchvision has no classification model '{model}'; "
                f"similar: {close}"
            )
    _remember(library, name)


def check_torchvision_dataset(name: str | None) -> None:
    if name and _known("torchvision", f"dataset:{name}"):
        return
    import torchvision.datasets

    if not name or not isinstance(getattr(torchvision.datasets, name, None), type):
        raise ValueError(
            f"data.name: '{name}' is not a dataset class in torchvision.datasets "
            "(e.g. CIFAR10, FashionMNIST, Flowers102)"
        )
    _remember("torchvision", f"dataset:{name}")


def names_file() -> Path:
    """Where checked names are remembered (``$THAWLINE_CACHE`` or ``~/.cache/thawline``)."""
    return user_cache_folder() / "known-names.json"


def _key(library: str, name: str) -> str | None:
    try:
        return f"{library}=={version(library)}|{name}"
    except PackageNotFoundError:
        return None


def _read() -> set[str]:
    try:
        return set(json.loads(names_file().read_text()))
    except (OSError, ValueError, TypeError):
        return set()


def _known(library: str, name: str) -> bool:
    key = _key(library, name)
    return key is not None and key in _read()


def _remember(library: str, name: str) -> None:
    """Best effort: a read-only home or a race between processes only costs a later import."""
    key = _key(library, name)
    if key is None:
        return
    path = names_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(sorted(_read() | {key})))
        os.replace(tmp, path)
    except OSError:
        pass
