"""What ``thawline predict`` reads for a text model: strings, text files, folders of ``.txt``
files and CSV files, as ``prepare`` reads documents; binary and empty files are refused (a
picture given to a text model was once classified as its bytes)."""

from __future__ import annotations

import pytest

from thawline.errors import BadDocumentError, BadImageError
from thawline.predict import documents


def test_files_folders_and_csv_rows_are_read_as_prepare_reads_them(tmp_path):
    (tmp_path / "news").mkdir()
    (tmp_path / "news" / "a.txt").write_bytes(b"Shares  fell\r\nsharply.\n")
    (tmp_path / "news" / ".hidden.txt").write_text("not read")
    (tmp_path / "news" / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")  # not a .txt
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9 prices rose")
    (tmp_path / "rows.csv").write_text('text,label\n"Arsenal won",sport\n')
    found = documents([tmp_path / "news", tmp_path / "latin1.txt", tmp_path / "rows.csv"])
    assert found == [
        (str(tmp_path / "news" / "a.txt"), "Shares fell sharply."),  # whitespace normalised
        (str(tmp_path / "latin1.txt"), "caf\ufffd prices rose"),  # bad bytes replaced
        (f"{tmp_path / 'rows.csv'}:2", "Arsenal won"),
    ]


@pytest.mark.parametrize(
    ("content", "why"),
    [(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary data"), (b"  \n\t", "empty")],
)
def test_binary_and_empty_files_are_refused_by_name(tmp_path, content, why):
    path = tmp_path / "picture.png"
    path.write_bytes(content)
    with pytest.raises(BadDocumentError, match=f"picture.png: {why}"):
        documents([path])
    with pytest.raises(BadImageError, match="missing.txt: no such file"):
        documents([tmp_path / "missing.txt"])
