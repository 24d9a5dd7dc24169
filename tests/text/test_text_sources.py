"""Text sources and the decoding policy, on real BBC articles and hand-made bad documents."""

from __future__ import annotations

import json
import os

import pytest

from tests.text.conftest import bbc_folder, text_config
from thawline.config import ConfigError, config_from_dict
from thawline.data.documents import decode_document
from thawline.data.sources import open_source
from thawline.data.store import PreparedStore
from thawline.errors import BadDocumentError
from thawline.stages import prepare

ARTICLE = "Shares in the firm rose sharply after it reported record profits for the year."


def _write(path, data: bytes | str):
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(data, bytes) else path.write_text)(data)


def test_bbc_news_is_read_from_its_package():
    cfg = config_from_dict({
        "data": {"source": "bbc-news", "root": None},
        "backbone": {"name": "hf:sentence-transformers/all-MiniLM-L6-v2"},
    })  # fmt: skip
    source = open_source(cfg.data, cfg.prepare)
    counts = {c: sum(it.label == i for it in source.items) for i, c in enumerate(source.classes)}
    assert counts == {"business": 510, "entertainment": 386, "politics": 417, "sports": 511,
                      "tech": 401}  # fmt: skip


def test_textfolder_follows_the_imagefolder_rules(tmp_path):
    root = bbc_folder(tmp_path / "docs", per_class=2)
    _write(root / ".ipynb_checkpoints" / "x.txt", ARTICLE)  # hidden: never a class
    (root / "empty").mkdir()  # no documents: not a class
    _write(tmp_path / "outside.txt", ARTICLE)
    os.symlink(tmp_path / "outside.txt", root / "tech" / "escape.txt")
    cfg = text_config(tmp_path, root)
    source = open_source(cfg.data, cfg.prepare)
    assert source.classes == ["business", "entertainment", "politics", "sports", "tech"]
    assert len(source.items) == 10
    assert any("symlink leaves the data root" in p for p in source.problems)


def test_csv_and_jsonl_with_a_split_column(tmp_path):
    rows = [{"body": f"{ARTICLE} Item {i}.", "topic": "ab"[i % 2],
             "part": "test" if i < 4 else ""} for i in range(20)]  # fmt: skip
    csv_path = tmp_path / "news.csv"
    csv_path.write_text("body,topic,part\n" + "".join(
        f"\"{r['body']}\",{r['topic']},{r['part']}\n" for r in rows))  # fmt: skip
    jsonl_path = tmp_path / "news.jsonl"
    jsonl_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for source, path in (("csv", csv_path), ("jsonl", jsonl_path)):
        data = {"source": source, "root": str(path), "text_column": "body",
                "label_column": "topic", "split_column": "part"}  # fmt: skip
        cfg = text_config(tmp_path / source, path, data=data)
        opened = open_source(cfg.data, cfg.prepare)
        assert opened.classes == ["a", "b"]
        assert [it.split for it in opened.items[:5]] == ["test"] * 4 + [None]
        prepare.run(cfg, progress=False)
        store = PreparedStore(cfg.paths.prepared)
        assert store.count("test") == 4 and store.modality == "text"


def test_a_missing_column_names_the_columns_there(tmp_path):
    path = tmp_path / "news.csv"
    path.write_text("body,topic\nhello,a\n")
    cfg = text_config(tmp_path, path, data={"source": "csv", "root": str(path)})
    with pytest.raises(Exception, match=r"no column 'text'; columns: \['body', 'topic'\]"):
        open_source(cfg.data, cfg.prepare)


def test_an_image_backbone_on_text_is_a_config_error():
    with pytest.raises(
        ConfigError,
        match="backbone.name: 'timm:tf_efficientnet_lite0' is an "
        "image model but data.source 'bbc-news' holds text",
    ):
        config_from_dict({"data": {"source": "bbc-news", "root": None}})


def test_decoding_policy_strict_skip_replace():
    bad = "caf\xe9 ".encode("latin-1") + ARTICLE.encode()
    with pytest.raises(BadDocumentError, match=r"a.txt: not valid UTF-8 \(byte 3"):
        decode_document(bad, "a.txt", "strict")
    with pytest.raises(BadDocumentError):
        decode_document(bad, "a.txt", "skip")
    text, replaced = decode_document(bad, "a.txt", "replace")
    assert replaced and text.startswith("caf\ufffd ")
    for data, why in ((b"", "empty"), (b" \n\t ", "empty"), (b"PK\x03\x04\x00\x00", "binary")):
        with pytest.raises(BadDocumentError, match=why):
            decode_document(data, "b.txt", "replace")


def test_bad_documents_are_listed_or_stop_the_run(tmp_path):
    root = bbc_folder(tmp_path / "docs", per_class=4)
    _write(root / "tech" / "empty.txt", "   \n")
    _write(root / "tech" / "binary.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00")
    _write(root / "tech" / "latin1.txt", ("caf\xe9 " + ARTICLE).encode("latin-1"))
    big = (ARTICLE + " ") * 70_000  # about 5 MB
    _write(root / "business" / "huge.txt", big)
    cfg = text_config(tmp_path, root)
    prepare.run(cfg, progress=False)
    manifest = PreparedStore(cfg.paths.prepared).manifest
    assert sorted(p.split(":")[0].rsplit("/", 1)[1] for p in manifest["skipped"]) == [
        "binary.txt", "empty.txt"]  # fmt: skip
    assert manifest["decoding"] == {
        "policy": "replace",
        "replaced": 1,
        "files": ["tech/latin1.txt"],
    }
    assert manifest["truncated"] >= 1  # the 5 MB document, among the long articles
    strict = text_config(tmp_path / "strict", root, prepare={"decoding": "strict"})
    with pytest.raises(BadDocumentError, match=r"(binary|empty|latin1)\.txt"):
        prepare.run(strict, progress=False)
    skip = text_config(tmp_path / "skip", root, prepare={"decoding": "skip"})
    prepare.run(skip, progress=False)
    assert len(PreparedStore(skip.paths.prepared).manifest["skipped"]) == 3


def test_documents_equal_after_whitespace_are_duplicates_across_splits(tmp_path):
    root = tmp_path / "docs"
    source = bbc_folder(tmp_path / "bbc", per_class=6)
    for split, take in (("train", slice(0, 4)), ("test", slice(4, 6))):
        for class_dir in sorted(source.iterdir()):
            for path in sorted(class_dir.glob("*.txt"))[take]:
                _write(root / split / class_dir.name / path.name, path.read_bytes())
    leaked = sorted((source / "tech").glob("*.txt"))[4].read_text()
    _write(root / "train" / "tech" / "copy.txt", "  " + leaked.replace(" ", "  \n") + "\n\n")
    cfg = text_config(tmp_path, root)
    prepare.run(cfg, progress=False)
    manifest = PreparedStore(cfg.paths.prepared).manifest
    assert manifest["duplicates"]["groups"] == 1 and manifest["duplicates"]["dropped"] == 1
    assert "train/tech/copy.txt" in manifest["duplicates"]["examples"][0]
    assert "train/tech/copy.txt" not in PreparedStore(cfg.paths.prepared).load("train").keys
