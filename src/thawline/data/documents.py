"""Reading one text document safely: bytes to normalised text under the decoding policy.

Every problem names the file. A document is refused when it is empty or whitespace only, or
binary (NUL bytes); bytes that are not UTF-8 follow ``prepare.decoding``: ``strict`` refuses the
file, ``skip`` excludes it, ``replace`` decodes them as U+FFFD and counts the document. The
content hash is of the text with whitespace runs collapsed, so documents that differ only in
spacing or line endings are duplicates.
"""

from __future__ import annotations

import hashlib
import re

from thawline.errors import BadDocumentError

_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """Whitespace runs to one space, no leading or trailing space."""
    return _SPACE.sub(" ", text).strip()


def text_sha256(text: str) -> str:
    """A document's content hash: of its normalised text."""
    return hashlib.sha256(normalise(text).encode("utf-8")).hexdigest()


def decode_document(data: bytes, name: str, policy: str) -> tuple[str, bool]:
    """``(normalised text, whether bad bytes were replaced)``.

    Raises:
        BadDocumentError: Empty, whitespace only, binary, or not UTF-8 under ``strict``/``skip``.
    """
    if b"\x00" in data[:8192]:
        raise BadDocumentError(f"{name}: binary data (NUL bytes), not a text document")
    try:
        text, replaced = data.decode("utf-8-sig"), False
    except UnicodeDecodeError as err:
        if policy != "replace":
            raise BadDocumentError(
                f"{name}: not valid UTF-8 (byte {err.start}: {data[err.start : err.start + 1]!r}); "
                "set prepare.decoding: replace to decode such bytes as U+FFFD, or skip"
            ) from None
        text, replaced = data.decode("utf-8", errors="replace"), True
    text = normalise(text)
    if not text:
        raise BadDocumentError(f"{name}: empty or whitespace only")
    return text, replaced
