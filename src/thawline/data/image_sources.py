"""The image sources of ``prepare``: Fashion-MNIST (IDX files), an image folder, torchvision
datasets. Each follows :class:`thawline.data.sources.Source`: it lists its items (a key, a label,
the split it came with) and loads one as ``(sha256 of its content, RGB image)``.
"""

from __future__ import annotations

import gzip
import inspect
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from thawline.config import DataParams, PrepareParams
from thawline.data.images import BadImageError, decode_image, is_image_file
from thawline.data.items import Item, sha256_bytes
from thawline.errors import SourceError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}

# ---------------------------------------------------------------- Fashion-MNIST (IDX)


class FashionMNIST:
    """Fashion-MNIST from Debian's ``dataset-fashion-mnist`` or torchvision's download."""

    in_memory = True
    FILES: ClassVar[dict[str, tuple[str, str]]] = {
        "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
    }

    def __init__(self, data: DataParams):
        folder = self._locate(data)
        self.classes = list(FASHION_MNIST_CLASSES)
        self.problems: list[str] = []
        self.items: list[Item] = []
        arrays = []
        for split, (images_file, labels_file) in self.FILES.items():
            images = read_idx(folder / images_file)
            labels = read_idx(folder / labels_file)
            if len(images) != len(labels):
                raise SourceError(f"{folder / labels_file}: {len(labels)} labels for "
                                  f"{len(images)} images in {images_file}")  # fmt: skip
            arrays.append(images)
            self.items += [Item(f"{images_file}#{i}", int(y), split) for i, y in enumerate(labels)]
        self._pixels = np.concatenate(arrays)

    def load(self, index: int) -> tuple[str, np.ndarray]:
        pixels = self._pixels[index]
        return sha256_bytes(pixels.tobytes()), pixels

    def digest(self, index: int) -> str:
        return self.load(index)[0]

    def _locate(self, data: DataParams) -> Path:
        root = data.root or DEBIAN_FASHION_MNIST
        candidates = [root, root / "FashionMNIST" / "raw"]  # the latter: torchvision's layout
        for folder in candidates:
            if all((folder / f).is_file() for pair in self.FILES.values() for f in pair):
                return folder
        if not data.download:
            raise SourceError(
                f"Fashion-MNIST not found in {candidates[0]}; install it with "
                "'apt-get install dataset-fashion-mnist' or set data.download: true"
            )
        # Never write into the system folder the Debian package owns.
        target = Path.home() / ".cache" / "thawline" if root == DEBIAN_FASHION_MNIST else root
        return self._download(target)

    def _download(self, root: Path) -> Path:
        import torchvision.datasets

        try:
            torchvision.datasets.FashionMNIST(str(root), train=True, download=True)
            torchvision.datasets.FashionMNIST(str(root), train=False, download=True)
        except Exception as err:  # torchvision raises RuntimeError/URLError when offline
            raise SourceError(
                f"Fashion-MNIST is not installed ({DEBIAN_FASHION_MNIST} is missing) and the "
                f"download failed ({type(err).__name__}: {err}). Install it with "
                "'apt-get install dataset-fashion-mnist', or point data.root at the IDX .gz files"
            ) from None
        return root / "FashionMNIST" / "raw"


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzipped or not) as a numpy array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise SourceError(f"{path}: cannot read IDX file ({err})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise SourceError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise SourceError(f"{path}: truncated IDX file ({body.size} of {np.prod(shape)} bytes)")
    return body.reshape(shape)


# ---------------------------------------------------------------- image folder


class ImageFolder:
    """Class subfolders (``root/<class>/*.jpg``), or ``root/{train,val,test}/<class>/*``.

    Hidden entries (``.ipynb_checkpoints``, ``.DS_Store``), ``__MACOSX`` and folders without images
    never become classes; symlinks that leave the root are refused before they are opened.
    """

    in_memory = False
    kind = "images"  # for messages

    def __init__(self, root: Path, prepare: PrepareParams):
        self.root = root.resolve()
        self.prepare = prepare
        self.problems: list[str] = []
        split_roots = {
            SPLIT_NAMES[p.name.lower()]: p
            for p in _visible_dirs(self.root)
            if p.name.lower() in SPLIT_NAMES
        }
        if split_roots and "train" not in split_roots:
            raise SourceError(f"{root}: has {sorted(split_roots)} folders but no train/ folder")
        layout = split_roots or {None: self.root}
        per_split = {split: self._scan(folder) for split, folder in layout.items()}
        self.classes = sorted(per_split["train" if split_roots else None])
        if not self.classes:
            raise SourceError(f"{root}: no class folder with {self.kind} found")
        index = {name: i for i, name in enumerate(self.classes)}
        self.items = []
        for split, found in per_split.items():
            unknown = sorted(set(found) - set(index))
            if unknown:
                raise SourceError(f"{layout[split]}: classes {unknown} are not in the train split")
            for name in sorted(found):
                self.items += [Item(key, index[name], split) for key in found[name]]

    def _scan(self, folder: Path) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for class_dir in _visible_dirs(folder):
            files = sorted(self._walk(class_dir))
            if files:
                found[class_dir.name] = files
        return found

    def _walk(self, class_dir: Path):
        for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if _visible(d))
            for name in filenames:
                path = Path(dirpath) / name
                if not _visible(name) or not self.accepts(path):
                    continue
                if path.is_symlink() and not path.resolve().is_relative_to(self.root):
                    self.problems.append(f"{path}: symlink leaves the data root {self.root}")
                    continue
                yield path.relative_to(self.root).as_posix()

    @staticmethod
    def accepts(path: Path) -> bool:
        return is_image_file(path)

    def load(self, index: int) -> tuple[str, Image.Image]:
        key = self.items[index].key
        path = safe_join(self.root, key)
        try:
            data = path.read_bytes()
        except OSError as err:
            raise BadImageError(f"{path}: cannot read ({err.strerror})") from None
        return sha256_bytes(data), decode_image(data, str(path), self.prepare.max_pixels)

    def digest(self, index: int) -> str:
        try:
            return sha256_bytes(safe_join(self.root, self.items[index].key).read_bytes())
        except (OSError, BadImageError) as err:  # unreadable now: a change worth noticing
            return f"unreadable: {err}"


def safe_join(root: Path, key: str) -> Path:
    """``root / key``, refusing absolute keys, ``..`` and symlinks that leave ``root``."""
    if Path(key).is_absolute() or ".." in Path(key).parts:
        raise BadImageError(f"{key}: absolute paths and '..' are not allowed under {root}")
    path = root / key
    if not path.resolve().is_relative_to(root.resolve()):
        raise BadImageError(f"{path}: resolves outside the data root {root}")
    return path


def _visible(name: str) -> bool:
    return not name.startswith((".", "__MACOSX"))


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if _visible(p.name) and p.is_dir() and not p.is_symlink()
    )


# ---------------------------------------------------------------- torchvision.datasets


class TorchvisionDataset:
    """Any classification dataset class in ``torchvision.datasets`` (downloaded when online)."""

    in_memory = False  # items may be files decoded on access

    def __init__(self, data: DataParams):
        import torchvision.datasets

        cls = getattr(torchvision.datasets, str(data.name))
        root = str(data.root or Path.home() / ".cache" / "thawline" / "torchvision")
        self.problems: list[str] = []
        self._parts: list[Any] = []
        self.items: list[Item] = []
        for split, kwargs in _split_kwargs(cls):
            try:
                dataset = cls(root, download=data.download, **kwargs)
            except Exception as err:
                raise SourceError(
                    f"torchvision.datasets.{data.name} ({split}) could not be loaded from {root} "
                    f"({type(err).__name__}: {err}); it needs the network once, or its files "
                    "in data.root"
                ) from None
            labels = _labels_of(dataset)
            self.items += [
                Item(f"{split}#{i}", int(y), split if len(_split_kwargs(cls)) > 1 else None)
                for i, y in enumerate(labels)
            ]
            self._parts += [(dataset, i) for i in range(len(labels))]
        first = self._parts[0][0]
        count = max(item.label for item in self.items) + 1
        self.classes = [str(c) for c in getattr(first, "classes", range(count))]

    def load(self, index: int) -> tuple[str, np.ndarray]:
        dataset, i = self._parts[index]
        image = dataset[i][0]
        pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
        return sha256_bytes(pixels.tobytes() + str(pixels.shape).encode()), pixels

    def digest(self, index: int) -> str:
        return self.load(index)[0]


def _split_kwargs(cls: type) -> list[tuple[str, dict[str, Any]]]:
    params = inspect.signature(cls.__init__).parameters
    if "train" in params:
        return [("train", {"train": True}), ("test", {"train": False})]
    if "split" in params:
        return [("train", {"split": "train"}), ("test", {"split": "test"})]
    return [("all", {})]


def _labels_of(dataset: Any) -> list[int]:
    for attr in ("targets", "_labels", "labels", "_samples_labels"):
        labels = getattr(dataset, attr, None)
        if labels is not None and len(labels) == len(dataset):
            return [int(y) for y in labels]
    return [int(dataset[i][1]) for i in range(len(dataset))]
