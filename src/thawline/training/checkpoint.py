"""Per-epoch checkpoints that resume exactly and never unpickle code.

Each checkpoint is a folder ``epoch-0003/`` holding:

    model.safetensors   the model's parameters and buffers
    best.safetensors    the best epoch's weights, when that is an earlier epoch
    state.pt            optimizer, scheduler, scaler, RNG states, phase, epoch, unfrozen groups,
                        history: tensors and plain containers only, read with weights_only=True
    complete.json       sha256 of every file above, written last

The folder is assembled under a temporary name and renamed into place, and ``complete.json`` is
written last, so a folder without it, or whose files do not match it, is half-written or damaged:
it is skipped for the previous one, with a warning. If checkpoints exist but none is complete,
loading raises rather than silently starting again from epoch 0.
"""

from __future__ import annotations

import logging
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from thawline.errors import CheckpointError
from thawline.files import disk_full_errors, read_json, sha256_file, write_json

log = logging.getLogger(__name__)
MODEL, BEST, STATE, COMPLETE = "model.safetensors", "best.safetensors", "state.pt", "complete.json"
_NAME = re.compile(r"epoch-(\d{4,})")


@dataclass
class Checkpoint:
    """A loaded checkpoint: weights plus the training state saved beside them."""

    path: Path
    epoch: int
    model: dict[str, torch.Tensor]
    best: dict[str, torch.Tensor] | None
    state: dict[str, Any]


def save_checkpoint(
    folder: Path,
    epoch: int,
    model: dict[str, torch.Tensor],
    state: dict[str, Any],
    *,
    best: dict[str, torch.Tensor] | None = None,
    keep: int = 2,
) -> Path:
    """Write ``folder/epoch-NNNN`` atomically, then prune to the newest ``keep``.

    Args:
        folder: The checkpoints folder.
        epoch: The epoch just completed (1-based).
        model: The model's state dict.
        state: Optimizer/scheduler/scaler state dicts, RNG states, phase, history...; tensors
            and plain containers only (it must load with ``weights_only=True``).
        best: The best epoch's weights when they differ from ``model``.
        keep: How many checkpoints to keep.

    Returns:
        The checkpoint's folder.
    """
    final = folder / f"epoch-{epoch:04d}"
    tmp = folder / f".epoch-{epoch:04d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:  # a full disk leaves the earlier checkpoints as they were, and no half of this one
        with disk_full_errors(final):
            tmp.mkdir(parents=True)
            save_file(_cpu(model), str(tmp / MODEL), metadata={"epoch": str(epoch)})
            if best is not None:
                save_file(_cpu(best), str(tmp / BEST), metadata={"epoch": str(epoch)})
            torch.save(state, tmp / STATE)
            digests = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
            write_json(tmp / COMPLETE, {"epoch": epoch, "sha256": digests})  # last: complete
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in checkpoint_dirs(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoint_dirs(folder: Path) -> list[Path]:
    """Checkpoint folders (complete or not), oldest first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and _NAME.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(_NAME.fullmatch(p.name).group(1)))


def load_latest(folder: Path) -> Checkpoint | None:
    """The newest complete checkpoint in ``folder``, or None when there is none at all.

    Raises:
        CheckpointError: Checkpoints exist, but every one is incomplete or damaged.
    """
    candidates = checkpoint_dirs(folder)
    problems = []
    for path in reversed(candidates):
        try:
            return load_checkpoint(path)
        except CheckpointError as err:
            log.warning("skipping checkpoint %s: %s", path, err)
            problems.append(f"{path.name}: {err}")
    if candidates:
        raise CheckpointError(
            f"{folder}: {len(candidates)} checkpoint(s), none complete ({'; '.join(problems)}); "
            "delete the folder or set finetune.resume: false to start again from epoch 0"
        )
    return None


def load_checkpoint(path: Path) -> Checkpoint:
    """Load one checkpoint after checking every file against ``complete.json``.

    Raises:
        CheckpointError: Missing ``complete.json``, a missing or altered file, or unreadable data.
    """
    if not (path / COMPLETE).is_file():
        raise CheckpointError("no complete.json (half-written)")
    try:
        record = read_json(path / COMPLETE)
        for name, digest in record["sha256"].items():
            if not (path / name).is_file() or sha256_file(path / name) != digest:
                raise CheckpointError(f"{name} is missing or does not match its sha256")
        best = load_file(str(path / BEST)) if BEST in record["sha256"] else None
        # weights_only: a checkpoint from elsewhere cannot run code when loaded.
        state = torch.load(path / STATE, map_location="cpu", weights_only=True)
        model = load_file(str(path / MODEL))
    except CheckpointError:
        raise
    except Exception as err:
        raise CheckpointError(f"unreadable ({type(err).__name__}: {err})") from err
    return Checkpoint(path, int(record["epoch"]), model, best, state)


def clear_checkpoints(folder: Path) -> None:
    """Remove every checkpoint and leftover temporary folder (a fresh start)."""
    for path in [*checkpoint_dirs(folder), *folder.glob(".epoch-*.tmp")]:
        shutil.rmtree(path, ignore_errors=True)


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch and CUDA RNG states as tensors and plain containers."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, torch.tensor(internal, dtype=torch.int64), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(int(v) for v in internal.tolist()), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
