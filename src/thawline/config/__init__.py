"""The one typed configuration, loaded from ``params.yaml``.

Only this package reads YAML. Every section is a frozen pydantic model that forbids unknown keys
(:mod:`~thawline.config.base`), so a typo stops the run with a one-line message naming the key
and the keys that are allowed, before anything is written. ``-S key=value`` overrides go through
the same validation. The sections' defaults equal params.yaml, the file users run (a test holds
them together); tests start from params.yaml itself.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError, model_validator

from thawline.config.base import Section, record_reads, unrecorded
from thawline.config.inputs import (
    BackboneParams,
    DataParams,
    ExtractParams,
    PathsParams,
    PrepareParams,
)
from thawline.config.learning import (
    FinetuneParams,
    HeadParams,
    HeadSweepParams,
    PhaseParams,
    ScratchParams,
)
from thawline.config.operations import (
    TTA_CHOICES,
    EvaluateParams,
    FlowParams,
    RegistryParams,
    RetrainParams,
    SystemParams,
    TrackingParams,
)
from thawline.errors import ConfigError
from thawline.files import atomic_path

__all__ = [
    "TTA_CHOICES", "BackboneParams", "Config", "ConfigError", "DataParams", "EvaluateParams",
    "ExtractParams", "FinetuneParams", "FlowParams", "HeadParams", "HeadSweepParams", "PathsParams",
    "PhaseParams", "PrepareParams", "RegistryParams", "RetrainParams", "ScratchParams",
    "SystemParams", "TrackingParams", "config_from_dict", "dump_config", "load_config",
    "record_reads", "write_overrides",
]  # fmt: skip


class Config(Section):
    """The whole of ``params.yaml``."""

    seed: int = 42
    paths: PathsParams = PathsParams()
    data: DataParams = DataParams()
    prepare: PrepareParams = PrepareParams()
    backbone: BackboneParams = BackboneParams()
    extract: ExtractParams = ExtractParams()
    head: HeadParams = HeadParams()
    finetune: FinetuneParams = FinetuneParams()
    scratch: ScratchParams = ScratchParams()
    evaluate: EvaluateParams = EvaluateParams()
    tracking: TrackingParams = TrackingParams()
    registry: RegistryParams = RegistryParams()
    flow: FlowParams = FlowParams()
    retrain: RetrainParams = RetrainParams()
    system: SystemParams = SystemParams()

    @model_validator(mode="after")
    def _placed(self) -> Config:
        self.place("")  # every section learns its key, for record_reads
        if self.data.modality != self.backbone.modality:
            example = {
                "text": "hf:sentence-transformers/all-MiniLM-L6-v2",
                "image": "timm:tf_efficientnet_lite0",
            }[self.data.modality]
            raise ValueError(
                f"backbone.name: '{self.backbone.name}' is {_a(self.backbone.modality)} model but "
                f"data.source '{self.data.source}' holds {self.data.modality}; use e.g. "
                f"{example}"
            )
        if self.finetune.thaw == "lora" and self.backbone.modality != "text":
            raise ValueError(
                "finetune.thaw: 'lora' adapts a text backbone's attention and feed-forward "
                f"layers; {self.backbone.name} is an image model: use thaw: layers"
            )
        return self


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def load_config(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> Config:
    """Load and validate ``params.yaml`` with optional ``key.sub=value`` overrides.

    Args:
        path: The params file.
        overrides: Items like ``extract.batch_size=32``; values are YAML, or Hydra's form as
            ``dvc exp run -S`` takes it (``[{groups:3,lr:0.001}]``).

    Returns:
        The validated, frozen config.

    Raises:
        ConfigError: One line naming the file, the key and what is allowed.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"{path}: params file not found in {Path.cwd()}; run thawline in the project folder "
            "(the one with params.yaml and dvc.yaml), or give the file with -p/--params"
        )
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
    shown = item if item.isprintable() else repr(item)[1:-1]  # a newline would break the line
    key, sep, value = item.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", key.strip()):
        raise ConfigError(f"override '{shown}': expected KEY=VALUE, e.g. extract.batch_size=32")
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{shown}': '{part}' is not a section")
    try:
        node[parts[-1]] = override_value(value)
    except yaml.YAMLError as err:  # found by tests/reliability/test_properties.py ("seed=@")
        problem = " ".join(str(getattr(err, "problem", None) or err).split())
        raise ConfigError(
            f"override '{shown}': the value is not valid YAML ({problem}); quote it as a string, "
            f"e.g. {key.strip()}='\"...\"'"
        ) from None


# Hydra's (and so `dvc exp run -S`'s) flow mappings need no space after a key's colon:
# `{groups:3,lr:0.001}`. YAML reads that as a key "groups:3"; a space after each such colon makes
# the same text mean the same thing to both, so the Makefile's profile works with `thawline -S`.
_HYDRA_KEY = re.compile(r"([{,]\s*[A-Za-z_]\w*):(?=\S)")


def override_value(value: str) -> Any:
    """The value of a ``-S key=value`` override: YAML, or Hydra's form of lists and mappings."""
    if not value.strip():
        return None
    if value.lstrip().startswith(("[", "{")):
        value = _HYDRA_KEY.sub(r"\1: ", value)
    return yaml.safe_load(value)


def _one_line(err: ValidationError) -> str:
    errors = err.errors()
    first = errors[0]
    where = _key_path(first["loc"])
    key = ".".join(str(p) for p in where)
    if first["type"] == "extra_forbidden":
        section = _section_model(first["loc"][:-1])
        allowed = ", ".join(section.model_fields) if section else "?"
        return f"unknown key '{key}'; allowed here: {allowed}"
    msg = first["msg"].removeprefix("Value error, ")
    if "." in msg.split(":", 1)[0]:  # our validators already start with the key they check
        return msg
    # A number-or-"auto" key fails both branches of its union: say both.
    word = [e["msg"] for e in errors[1:] if e["type"] == "literal_error"
            and _key_path(e["loc"]) == where]  # fmt: skip
    if word:
        msg += f", or {word[0][0].lower()}{word[0][1:]}"
    got = first.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{key}: {msg}{shown}"


def _key_path(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """``loc`` without pydantic's union branch tags (``constrained-int``, ``literal['auto']``)."""
    return tuple(p for p in loc if isinstance(p, int) or (re.fullmatch(r"[A-Za-z_]\w*", p)
                 and p not in ("int", "float", "str", "bool")))  # fmt: skip


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
    """The config as plain JSON-able data, for logs and tracking: provenance, not a read of
    any param (:func:`~thawline.config.base.record_reads` does not count it)."""
    with unrecorded():
        return cfg.model_dump(mode="json")
