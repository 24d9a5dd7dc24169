"""The HTML pieces the report is built from; every string from the data goes through
:func:`html.escape` here."""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


def figure(path: Path, title: str, caption: str = "") -> str:
    """A PNG embedded as base64 (the page travels as one file); nothing when it is absent."""
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    note = f"<p class='sub'>{e(caption)}</p>" if caption else ""
    heading = f"<h3>{e(title)}</h3>" if title else ""
    return (
        f"<figure><figcaption>{heading}{note}</figcaption>"
        f"<img alt='{e(title or caption)}' src='data:image/png;base64,{data}'></figure>"
    )


def table(header: Sequence[str], rows: Iterable[tuple[Sequence[str], bool]]) -> str:
    """Rows of ``(cells, highlighted)``."""
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join(
        f"<tr{' class=best' if best else ''}>{''.join(f'<td>{e(c)}</td>' for c in cells)}</tr>"
        for cells, best in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def facts(pairs: Iterable[tuple[str, Any]]) -> str:
    """A definition list of ``(label, value)``; values that are None are left out."""
    items = "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in pairs if v is not None)
    return f"<dl>{items}</dl>"


def link(url: str, text: str) -> str:
    return f"<a href='{e(url)}'>{e(text)}</a>"


def section(title: str, content: str, anchor: str = "") -> str:
    ident = f" id='{e(anchor)}'" if anchor else ""
    return f"<section{ident}><h2>{e(title)}</h2>{content}</section>"


def num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def e(text: Any) -> str:
    return html.escape(str(text), quote=True)
