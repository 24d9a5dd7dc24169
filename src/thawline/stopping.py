"""Stopping cleanly on SIGTERM and SIGINT, the way schedulers ask a run to stop.

Prefect's cancellation, Kubernetes and ``kill`` send SIGTERM, Ctrl-C sends SIGINT; then a grace
period runs before SIGKILL (Kubernetes: 30 s). Inside :func:`graceful_stop` the first signal only
records the request. Code that can stop at a safe point (a training step, a feature shard) polls
:func:`requested` inside a :func:`deferred` block, writes what lets a rerun resume, and raises
:class:`~thawline.errors.Interrupted`; anywhere else the handler raises it at once (every write is
atomic, so nothing half-written is trusted). If the process is still alive ``grace_s`` after the
signal, or a second signal comes, it exits at once with ``128 + signal``: what has been written
stays valid, and the rerun resumes from the last complete checkpoint or shard.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

from thawline.errors import Interrupted

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_state = {"signal": None, "deferred": 0, "timer": None}


def requested() -> int | None:
    """The signal that asked this process to stop, if one did (inside :func:`graceful_stop`)."""
    return _state["signal"]


def interrupted(what: str) -> Interrupted:
    """The error to raise at a safe point: ``what`` says what was kept and how to resume."""
    signum = requested() or signal.SIGTERM
    return Interrupted(f"stopped by {signal.Signals(signum).name}: {what}", signum)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A block that polls :func:`requested` at its safe points: a signal only sets the flag."""
    _state["deferred"] += 1
    try:
        yield
    finally:
        _state["deferred"] -= 1


@contextlib.contextmanager
def graceful_stop(grace_s: float) -> Iterator[None]:
    """Handle SIGTERM and SIGINT as described above while the block runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _state.update(signal=None, deferred=0, timer=None)

    def handle(signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if _state["signal"] is not None:  # a second signal: the user means now
            _exit_now(signum, f"a second {name}")
        _state["signal"] = signum
        timer = threading.Timer(grace_s, _exit_now, (signum, f"{grace_s:g}s after {name}"))
        timer.daemon = True
        timer.start()
        _state["timer"] = timer
        if not _state["deferred"]:
            raise Interrupted(f"stopped by {name}", signum)
        print(f"thawline: {name}: stopping at the next safe point (at most {grace_s:g}s)",
              file=sys.stderr, flush=True)  # fmt: skip

    for s in SIGNALS:
        signal.signal(s, handle)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if _state["timer"] is not None:  # stopped in time: the caller carries on (a test, a flow)
            _state["timer"].cancel()
        _state.update(signal=None, deferred=0, timer=None)


def _exit_now(signum: int, why: str) -> None:
    print(f"thawline: exiting now ({why}); complete checkpoints and shards are kept, and a "
          "rerun resumes from them", file=sys.stderr, flush=True)  # fmt: skip
    os._exit(128 + signum)
