"""What every params section is: a frozen pydantic model that forbids unknown keys, and knows
where it sits in params.yaml so that the keys a stage reads can be recorded.

:func:`record_reads` is how the test that holds dvc.yaml to the code (every param key a stage's
``run`` reads must be listed for that stage) finds the keys: inside it, every leaf field read
from a section, and every section dumped whole, is noted as ``section.key``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from pydantic import BaseModel, ConfigDict, PrivateAttr

_READS: ContextVar[set[str] | None] = ContextVar("thawline_param_reads", default=None)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # Where it sits: "finetune", "head.sweep", "" for the whole config; None: not in a config
    # (a section built by hand, an element of a list): its reads are not recorded.
    _where: str | None = PrivateAttr(default=None)

    def __getattribute__(self, name: str) -> Any:
        value = super().__getattribute__(name)
        if name[0] != "_" and _READS.get() is not None and name in type(self).model_fields:
            _note(self, name, value)
        return value

    def model_dump(self, **kwargs: Any) -> dict[str, Any]:
        if (reads := _READS.get()) is not None:
            reads.update(_leaves(self, kwargs.get("exclude") or ()))
        return super().model_dump(**kwargs)

    def place(self, where: str) -> None:
        """Tell this section (and the sections inside it) where it sits in params.yaml."""
        self.__pydantic_private__["_where"] = where
        for name in type(self).model_fields:
            value = super().__getattribute__(name)
            if isinstance(value, Section):
                value.place(f"{where}.{name}" if where else name)


@contextlib.contextmanager
def unrecorded() -> Iterator[None]:
    """Reads inside the block are not a stage's: logging the whole config for provenance."""
    token = _READS.set(None)
    try:
        yield
    finally:
        _READS.reset(token)


@contextlib.contextmanager
def record_reads() -> Iterator[set[str]]:
    """Collect the ``section.key`` names of every param read inside the block."""
    reads: set[str] = set()
    token = _READS.set(reads)
    try:
        yield reads
    finally:
        _READS.reset(token)


def _key(section: Section, name: str) -> str | None:
    where = (section.__pydantic_private__ or {}).get("_where")
    if where is None:
        return None
    return f"{where}.{name}" if where else name


def _note(section: Section, name: str, value: Any) -> None:
    if isinstance(value, Section):
        return  # a section is not a param: its fields are, when they are read
    if (key := _key(section, name)) is not None:
        _READS.get().add(key)  # type: ignore[union-attr]


def _leaves(section: Section, exclude) -> set[str]:
    keys = set()
    for name in type(section).model_fields:
        if name in exclude:
            continue
        value = BaseModel.__getattribute__(section, name)
        if isinstance(value, Section):
            keys |= _leaves(value, ())
        elif (key := _key(section, name)) is not None:
            keys.add(key)
    return keys
