"""Progress bars that suit where the output goes.

On a terminal: tqdm's bar. Under DVC, CI or a Prefect worker stderr is a pipe, where a bar is a
stream of carriage returns that shows nothing for minutes; there each bar prints one plain line
about every 10 % of the work or every 30 seconds, with the rate and the time left.
"""

from __future__ import annotations

import io
import sys
from typing import Any

from tqdm.auto import tqdm

PLAIN_FORMAT = (
    "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
)


class PlainProgress(tqdm):
    """tqdm for logs: whole lines, at most about every 10 % or 30 s (and at the end)."""

    def __init__(self, *args: Any, every_s: float = 30.0, **kwargs: Any):
        # tqdm's own writes (a newline on close) go nowhere: display() prints whole lines.
        kwargs |= {"bar_format": PLAIN_FORMAT, "ascii": True, "file": io.StringIO()}
        kwargs.setdefault("mininterval", 1.0)
        self._every_s, self._said_at, self._said_n = every_s, None, None
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        now = self._time()
        step = (self.total or 0) / 10
        done = self.total is not None and self.n >= self.total
        due = (
            self._said_at is None
            or done
            or now - self._said_at >= self._every_s
            or (step and self.n - self._said_n >= step)
        )
        if due and (self._said_n != self.n or self._said_at is None):
            self._said_at, self._said_n = now, self.n
            print(self.format_meter(**self.format_dict), file=sys.stderr, flush=True)
        return True


def progress_bar(*args: Any, disable: bool = False, **kwargs: Any) -> tqdm:
    """``tqdm(...)`` on a terminal, :class:`PlainProgress` otherwise (same arguments)."""
    if disable or sys.stderr.isatty():
        return tqdm(*args, disable=disable, **kwargs)
    return PlainProgress(*args, **kwargs)
