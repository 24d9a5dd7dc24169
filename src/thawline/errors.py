"""Every error thawline raises on purpose, under one base, each with the exit code it means.

The CLI catches :class:`ThawlineError` (never a name), prints its one-line message and exits with
its ``exit_code``; anything else is a crash. The codes mean one thing each:

====  ======================================================================================
0     done
1     a stage failed with its own error (NaN, a missing or damaged upstream output, a
      checkpoint that cannot be resumed, a refused registration): rerunning will not help
2     bad input or config (an unknown key, a missing data folder, a broken image): fix it
3     a crash: a bug or the environment (a traceback is printed); the flows retry it
130   stopped by SIGINT (Ctrl-C), 143 by SIGTERM: at a safe point, resumable (``stopping``)
====  ======================================================================================

A process killed by a signal exits with its own code (-9, 137...); the flows retry those too.
"""

from __future__ import annotations

FAILED, BAD_INPUT, CRASH = 1, 2, 3


class ThawlineError(Exception):
    """The base: a message that says what is wrong and what to do, and an exit code."""

    exit_code = FAILED


class InputError(ThawlineError):
    """Bad input or config: the user's to fix (exit 2)."""

    exit_code = BAD_INPUT


class ConfigError(InputError, ValueError):
    """A configuration problem, phrased as one line that names the key and what is allowed."""


class SourceError(InputError):
    """A data source that cannot be read (missing folder, no classes, a bad dataset name)."""


class BadImageError(InputError, ValueError):
    """An image file that cannot be decoded, or is too large to decode safely."""


class BadDocumentError(InputError, ValueError):
    """A text document that is empty, binary or not UTF-8 (under ``prepare.decoding: strict``)."""


class RefusedInputError(InputError, ValueError):
    """Rows a model refused to predict on: an image it cannot decode, a malformed value (the
    message names the row or file)."""


class WeightsError(InputError):
    """Backbone weights that cannot be had or do not fit the architecture."""


class UpstreamError(ThawlineError):
    """What an earlier stage writes is missing or stale: the message names the stage to run."""


class StoreError(ThawlineError):
    """The prepared store is missing, incomplete or altered."""


class CacheError(ThawlineError):
    """A feature cache that is missing, stale or corrupted; the message names the file."""


class NonFiniteLossError(ThawlineError, FloatingPointError):
    """The loss became NaN or infinite, or diverged; nothing from this run is saved.

    ``diverged`` tells a finite loss that ran away (a fine-tune may retry that phase at a lower
    LR) from a NaN/inf loss, gradient or weight (a broken run: it stops).
    """

    def __init__(self, message: str, *, diverged: bool = False):
        super().__init__(message)
        self.diverged = diverged


class CheckpointError(ThawlineError):
    """Checkpoints exist but none can be resumed from, or they belong to another run."""


class EvaluationError(ThawlineError):
    """A model or its predictions cannot be evaluated or registered as asked."""


class TrackingError(ThawlineError):
    """The MLflow store or registry refused an operation (the message says which)."""


class TrackingUnreachable(TrackingError):
    """The tracking server does not answer: the environment, so the flows retry it (exit 3)."""

    exit_code = CRASH


class RegistryError(TrackingError):
    """A registry problem: a dangling alias, a missing model version, a refused registration."""


class Interrupted(ThawlineError):
    """Stopped by SIGTERM or SIGINT at a safe point; exit code 128 + the signal, as a shell's."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class DiskFullError(ThawlineError):
    """A write failed for lack of space (ENOSPC); the message names the path."""


class LockedError(ThawlineError):
    """Another process holds the lock of the output this stage writes."""


class StageError(ThawlineError):
    """In a flow: a stage failed with its own error (exit 1 or 2); retrying would not help."""


class TransientStageError(ThawlineError):
    """In a flow: a stage crashed or never started (a locked repo, a killed process): retried."""

    exit_code = CRASH
