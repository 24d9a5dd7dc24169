"""One writer per stage output: two ``thawline stage extract`` on one project take turns.

DVC locks its repository for ``dvc repro`` (a flow's ``dvc repro`` that meets one answers "Unable
to acquire lock" and the flow retries it), but a stage started by hand, or by two flows in two
checkouts of one data folder, has no such guard. The lock is ``flock`` on a hidden file beside the
output (``data/.features.lock``): the kernel drops it when its owner dies, so a killed run never
leaves a lock that blocks the next one. The file holds the owner's pid and command, for the
message of whoever waits; a file left by a dead owner is noticed and taken over.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from thawline.errors import LockedError

log = logging.getLogger(__name__)
POLL_S = 0.2


def lock_path(output: Path) -> Path:
    """The lock file of an output folder or file."""
    output = Path(output)
    return output.parent / f".{output.name}.lock"


@contextlib.contextmanager
def output_lock(output: Path, wait_s: float, what: str) -> Iterator[None]:
    """Hold the lock of ``output`` for the block, waiting up to ``wait_s`` for its owner.

    Raises:
        LockedError: Still held by another process after ``wait_s``; the message names it.
    """
    path = lock_path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline, told = time.monotonic() + wait_s, False
    while True:
        handle = open(path, "a+")  # noqa: SIM115 (held past this block, closed in the finally)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            owner = _owner(path)
            if time.monotonic() >= deadline:
                raise LockedError(
                    f"{output} is being written by {owner} (lock {path}); wait for it to end or "
                    f"stop it, then rerun (system.lock_wait_s={wait_s:g} is how long to wait)"
                ) from None
            if not told:
                print(f"thawline: {what}: waiting for {owner}, which is writing {output} "
                      f"(at most {wait_s:g}s, system.lock_wait_s)",
                      file=sys.stderr, flush=True)  # fmt: skip
                told = True
            time.sleep(POLL_S)
            continue
        # Locked; but the holder before us may have removed the file after we opened it, and
        # a newcomer may then lock a new file under the same name: only the named file counts.
        if _same_file(handle, path):
            break
        handle.close()
    try:
        _take_over(handle, path)
        yield
    finally:
        path.unlink(missing_ok=True)  # before unlocking: a waiter on this file then retries
        handle.close()


def _same_file(handle, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(handle.fileno()), os.stat(path))
    except FileNotFoundError:
        return False


def _take_over(handle, path: Path) -> None:
    handle.seek(0)
    left = _parse(handle.read())
    if left and left.get("pid") != os.getpid():  # its owner died without removing it
        log.info("lock %s was left by pid %s (%s), which is gone: taking it over",
                 path, left.get("pid"), left.get("command"))  # fmt: skip
    handle.seek(0)
    handle.truncate()
    command = " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:])
    handle.write(json.dumps({"pid": os.getpid(), "command": command, "since": time.time()}))
    handle.flush()


def _owner(path: Path) -> str:
    try:
        info = _parse(path.read_text())
    except OSError:
        info = None
    if not info:
        return "another process"
    since = time.strftime("%H:%M:%S", time.localtime(info.get("since", 0)))
    return f"pid {info.get('pid')} ({info.get('command')}, since {since})"


def _parse(text: str) -> dict | None:
    try:
        found = json.loads(text)
    except ValueError:
        return None
    return found if isinstance(found, dict) else None
