"""``thawline predict``: top-k labels for image files and folders from a registered model, or
for documents from a text model (strings, text files, folders of them, CSV files).

thawline predict --model models:/thawline@champion photo.jpg folder/ --top-k 3 --csv out.csv
thawline predict --model models:/thawline-text@champion --text "Shares fell..." news/ rows.csv
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Any

import numpy as np

from thawline.config import TTA_CHOICES
from thawline.errors import BAD_INPUT, BadDocumentError, BadImageError
from thawline.files import atomic_path

DEFAULT_MODEL = "models:/thawline@champion"
CHUNK = 64  # images decoded and classified at a time, so a big folder needs little memory


def image_files(paths: list[Path]) -> list[Path]:
    """Files as given, and the image files inside folders (recursively, hidden ones skipped).

    Raises:
        BadImageError: A path that does not exist.
    """
    from thawline.data.images import is_image_file  # torchvision: not for --help

    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p))
            found += [p for p in inside if not _hidden(p.relative_to(path))]
        elif path.is_file():
            found.append(path)
        else:
            raise BadImageError(f"{path}: no such file or folder")
    return found


def predict_paths(
    model_uri: str,
    paths: list[Path],
    top_k: int = 3,
    tracking_uri: str | None = None,
    texts: list[str] | None = None,
    tta: str = "none",
) -> list[dict[str, Any]]:
    """Classify image files (folders expand to their images).

    Args:
        model_uri: ``models:/<name>@<alias>``, ``models:/<name>/<version>``, an MLflow model
            folder, or a saved thawline model folder (``paths.model``).
        paths: Image files and folders.
        top_k: How many labels to return per image.
        tracking_uri: The MLflow store for ``models:/`` URIs (default: ``$MLFLOW_TRACKING_URI``,
            else ``sqlite:///mlflow.db``).
        texts: Documents to classify with a text model.
        tta: ``none``, ``flip`` or ``flip_shift``: average the softmax over the image and its
            mirror (and shifts), as ``evaluate.tta`` does; image models only.

    Returns:
        One dict per image: ``path``, ``label``, ``probability`` and ``top`` (``top_k`` pairs
        of label and probability, best first).

    Raises:
        BadImageError: A path that does not exist.
        MlflowException: An image that cannot be decoded (the message names the file); under
            ``mlflow_errors`` (the CLI) it is a RefusedInputError (exit 2).
        RegistryError: An alias that does not exist; never falls back to another version.
        TTAError: ``tta`` for a text model, or an unknown ``tta``.
    """
    from thawline.models.tta import check_tta  # torch, like mlflow, loads only when predicting
    from thawline.tracking import load_model

    model = load_model(model_uri, tracking_uri)
    check_tta(tta, model.modality)
    if model.modality == "text" or texts:
        return _predict_documents(model, paths, texts or [], top_k)
    files = image_files(paths)
    rows: list[dict[str, Any]] = []
    for start in range(0, len(files), CHUNK):
        chunk = files[start : start + CHUNK]
        table = model.predict([str(f) for f in chunk], tta)
        for file, probs in zip(chunk, table["probabilities"], strict=True):
            rows.append(_row(file, np.asarray(probs, dtype=float), model.classes, top_k))
    return rows


def _predict_documents(model, paths: list[Path], texts: list[str], top_k: int):
    """Documents: ``--text`` strings, text files, folders of them and CSV files (``text``)."""
    if model.modality != "text":
        raise BadImageError(f"{model.source}: an image model; --text needs a text model")
    named = [(f"text {i + 1}", t) for i, t in enumerate(texts)] + documents(paths)
    if empty := [name for name, text in named if not text.strip()]:  # named as the user knows it
        raise BadDocumentError(f"{', '.join(empty[:5])}: empty or whitespace only")
    rows: list[dict[str, Any]] = []
    for start in range(0, len(named), CHUNK):
        chunk = named[start : start + CHUNK]
        table = model.predict([text for _, text in chunk])
        for (name, _), probs in zip(chunk, table["probabilities"], strict=True):
            rows.append(_row(name, np.asarray(probs, dtype=float), model.classes, top_k))
    return rows


def documents(paths: list[Path]) -> list[tuple[str, str]]:
    """``(name, text)`` for text files, the ``.txt`` files inside folders, and the ``text``
    column of CSV files (named ``file:row``).

    Raises:
        BadImageError: A path that does not exist, or a CSV file without a ``text`` column.
        BadDocumentError: A file that is binary (an image given to a text model), or empty.
    """
    found: list[tuple[str, str]] = []
    for path in map(Path, paths):
        if path.is_dir():
            files = sorted(p for p in path.rglob("*.txt") if not _hidden(p.relative_to(path)))
            found += [(str(p), _read_document(p)) for p in files]
        elif path.suffix.lower() == ".csv" and path.is_file():
            with open(path, newline="", errors="replace") as f:
                reader = csv.DictReader(f)
                if "text" not in (reader.fieldnames or []):
                    raise BadImageError(f"{path}: no 'text' column ({reader.fieldnames})")
                found += [(f"{path}:{i}", row["text"]) for i, row in enumerate(reader, start=2)]
        elif path.is_file():
            found.append((str(path), _read_document(path)))
        else:
            raise BadImageError(f"{path}: no such file or folder")
    return found


def _read_document(path: Path) -> str:
    """A text file as ``prepare`` reads one (bad bytes replaced, as ``prepare.decoding:
    replace``): binary and empty files are refused, not classified."""
    from thawline.data.documents import decode_document

    return decode_document(path.read_bytes(), str(path), "replace")[0]


def add_predict_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``thawline predict``."""
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"registered model URI or model folder (default: {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--top-k", type=_positive, default=3, help="labels per image or document (default: 3)"
    )
    parser.add_argument("--csv", type=Path, metavar="OUT", help="also write path,rank,label,"
                        "probability rows to this CSV file")  # fmt: skip
    parser.add_argument(
        "--tracking-uri",
        help="MLflow store holding the model (default: $MLFLOW_TRACKING_URI, else "
        "sqlite:///mlflow.db)",
    )
    parser.add_argument(
        "--text", action="append", default=[], metavar="STRING",
        help="a document to classify with a text model (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--tta", default="none", choices=TTA_CHOICES, metavar="VIEWS",
        help="test-time augmentation (image models): flip averages the softmax over each image "
        "and its mirror, flip_shift also over four shifts of 1/32 of the size (default: none)",
    )  # fmt: skip
    parser.add_argument(
        "paths", nargs="*", type=Path, metavar="PATH",
        help="images or folders; for a text model: text files, folders of .txt files, or CSV "
        "files with a 'text' column",
    )  # fmt: skip
    return parser


def main_predict(args: argparse.Namespace) -> int:
    """Print the top-k labels per image (and write the CSV); returns the exit status."""
    from thawline.tracking import mlflow_errors

    with mlflow_errors():
        texts = getattr(args, "text", None) or []
        if not args.paths and not texts:
            print("thawline predict: give image or text paths, or --text", file=sys.stderr)
            return BAD_INPUT
        rows = predict_paths(args.model, args.paths, args.top_k,
                             getattr(args, "tracking_uri", None), texts,
                             getattr(args, "tta", "none"))  # fmt: skip
    if not rows:
        print(f"thawline: nothing to classify in {[str(p) for p in args.paths]}", file=sys.stderr)
        return BAD_INPUT
    width = max(len(str(row["path"])) for row in rows)
    for row in rows:
        ranked = ", ".join(f"{label} {p:.3f}" for label, p in row["top"])
        print(f"{row['path']!s:<{width}}  {ranked}")
    if args.csv is not None:
        write_csv(args.csv, rows)
        print(f"thawline: wrote {len(rows)} predictions to {args.csv}", file=sys.stderr)
    return 0


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """One line per image and rank: ``path,rank,label,probability``."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "rank", "label", "probability"])
        for row in rows:
            for rank, (label, p) in enumerate(row["top"], start=1):
                writer.writerow([row["path"], rank, label, f"{p:.6f}"])


def _row(file: Path | str, probs: np.ndarray, classes: list[str], top_k: int) -> dict[str, Any]:
    order = np.argsort(-probs, kind="stable")[:top_k]
    top = [(classes[i], float(probs[i])) for i in order]
    return {"path": str(file), "label": top[0][0], "probability": top[0][1], "top": top}


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
