"""Atomic file writes and content hashes, shared by every stage that writes outputs.

A file appears under its final name only once it is complete (temp file in the same folder, fsync,
``os.replace``), so a killed run can never leave a truncated file that a later stage trusts. A
temp file's name holds its writer's pid, so a later run removes only those whose writer is gone.
A write that fails for lack of space raises :class:`DiskFullError` naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thawline.errors import DiskFullError, ThawlineError

if TYPE_CHECKING:  # torch costs about a second to import; the config and --help never need it
    import torch

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
# torch.save reports a full disk as "[enforce fail at inline_container.cc] unexpected pos": so
# after any failed write, a filesystem with less than this left counts as full too.
NEARLY_FULL = 1 << 20
_TEMP = re.compile(r"\.(\d+)\.[^.]*\.tmp$")  # .<name>.<pid>.<random>.tmp


@contextlib.contextmanager
def disk_full_errors(path: Path) -> Iterator[None]:
    """Turn a failed write of ``path`` for lack of space into a :class:`DiskFullError`."""
    try:
        yield
    except ThawlineError:  # already says what went wrong (a full disk, a signal...)
        raise
    except Exception as err:
        if not out_of_space(err, Path(path).parent):
            raise
        free = _free_bytes(Path(path).parent)
        raise DiskFullError(
            f"disk full: could not write {path} ({free / 2**20:.1f} MiB left on its filesystem; "
            f"{type(err).__name__}: {str(err)[:200]}); free some space (or point paths.* at a "
            "bigger disk) and rerun: complete outputs are kept and reused"
        ) from err


def out_of_space(err: BaseException, folder: Path) -> bool:
    """Whether ``err`` (or its cause) says the disk is full, or ``folder``'s filesystem is."""
    seen = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in NO_SPACE:
            return True
        if "No space left on device" in str(seen) or "os error 28" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return _free_bytes(folder) < NEARLY_FULL


def _free_bytes(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return NEARLY_FULL


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with disk_full_errors(path):
        fd, tmp_name = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp"
        )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with disk_full_errors(path):
            yield tmp
            os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; outputs are meant to be shared
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def user_cache_folder() -> Path:
    """thawline's per-user cache (checked names, measured precisions): ``$THAWLINE_CACHE`` or
    ``~/.cache/thawline``."""
    return Path(os.environ.get("THAWLINE_CACHE") or Path.home() / ".cache" / "thawline")


def write_json(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


# safetensors writes a metadata dict in hash-map order, which differs from run to run: two runs
# with identical tensors gave files with different sha256, so DVC saw "changed" outputs and reran
# every downstream stage. One key holding sorted JSON makes the bytes a function of the content.
METADATA_KEY = "thawline"


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """Write a safetensors file atomically, byte-for-byte reproducible; return its sha256.

    Read the metadata back with :func:`tensor_metadata`.
    """
    packed = {METADATA_KEY: json.dumps(metadata, sort_keys=True)}
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=packed)
        digest = sha256_file(tmp)
    return digest


def save_file(tensors: dict[str, torch.Tensor], filename: str, metadata: dict[str, str]) -> None:
    """safetensors' ``save_file``, imported on first use (it imports torch, which the config
    and ``--help`` never need); a module attribute, so a test can make it fail mid-write."""
    from safetensors.torch import save_file as write

    write(tensors, filename, metadata=metadata)


def tensor_metadata(handle: Any) -> dict[str, str]:
    """The metadata that :func:`save_tensors` stored, from an open ``safe_open`` handle."""
    raw = handle.metadata() or {}
    try:
        return json.loads(raw[METADATA_KEY]) if METADATA_KEY in raw else {}
    except ValueError:
        return {}


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def tensors_sha256(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """sha256 over each tensor's name and bytes, in the order given: a shard's contents (sorted
    names, stored in its header), a backbone's weights (state-dict order, in the feature
    fingerprint), what a fine-tune starts from (its checkpoint series' name)."""
    import torch

    h = hashlib.sha256()
    for name, tensor in named:
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def sha256_json(data: Any) -> str:
    """A stable hash of JSON-able data (sorted keys), used for fingerprints."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def remove_stale_temps(folder: Path) -> None:
    """Delete temp files (or folders) that a killed run left behind: never read, and removed only
    when the process that wrote them is gone (a name without a pid is from an older version)."""
    for tmp in Path(folder).glob(".*.tmp"):
        found = _TEMP.search(tmp.name)
        if found and int(found.group(1)) != os.getpid() and owner_alive(int(found.group(1))):
            continue  # another live process is writing it
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def owner_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True
