"""Assembling the complete model for the trained head, shared by ``register`` and ``finetune``.

The backbone and weights come from the config, the hooked layers and exact preprocessing from the
feature manifest, the head from ``train_head``; every piece is checked to belong together.
"""

from __future__ import annotations

from thawline.config import Config
from thawline.data.store import read_manifest
from thawline.features.cache import CacheError, read_cache_manifest
from thawline.models.backbone import weights_sha256
from thawline.models.classifier import Classifier, build_classifier
from thawline.models.head import load_head
from thawline.models.preprocess import Preprocess


def build_model(cfg: Config) -> Classifier:
    """The complete classifier for the trained head, checked against the feature cache."""
    cache = read_cache_manifest(cfg.paths.features)
    parts = cache["fingerprint_parts"]
    prepared = read_manifest(cfg.paths.prepared)
    head, meta = load_head(cfg.paths.head)
    _check_head(cfg, cache, prepared, head.spec(), meta)
    recorded = {k: tuple(v) if isinstance(v, list) else v for k, v in parts["transform"].items()}
    layers = [part["name"] for part in cache["layout"]][1:]  # after pre_logits: hooked layers
    model = build_classifier(
        cfg.backbone.name, cfg.backbone.weights, layers, Preprocess(**recorded), head,
        cache["classes"], int(prepared["image_size"]),
    )  # fmt: skip
    backbone = model.features.backbone
    if weights_sha256(backbone) != parts["weights_sha256"]:
        raise CacheError(
            f"{cfg.paths.features}: the features come from other {cfg.backbone.name} weights than "
            f"backbone.weights={cfg.backbone.weights}; rerun extract and train_head"
        )
    configured = Preprocess.from_backbone(backbone, cfg.extract.image_size, cfg.extract.crop_pct)
    if configured != model.preprocess:
        raise CacheError(
            f"{cfg.paths.features}: extracted with preprocessing {model.preprocess.spec()}, but "
            f"the config now gives {configured.spec()}; rerun extract and train_head"
        )
    return model.eval()


def _check_head(cfg: Config, cache: dict, prepared: dict, spec: dict, meta: dict) -> None:
    problems = []
    if cache["fingerprint_parts"]["data"] != prepared["fingerprint"]:
        problems.append(f"the features in {cfg.paths.features} are of other prepared data")
    if cache["fingerprint_parts"]["backbone"] != cfg.backbone.name:
        problems.append(f"the features come from {cache['fingerprint_parts']['backbone']}")
    if meta.get("feature_fingerprint", cache["fingerprint"]) != cache["fingerprint"]:
        problems.append(f"the head in {cfg.paths.head} was trained on other features")
    if spec["in_features"] != cache["num_features"]:
        problems.append(
            f"the head takes {spec['in_features']} features, not {cache['num_features']}"
        )
    if spec["num_classes"] != len(cache["classes"]):
        problems.append(f"the head predicts {spec['num_classes']} classes")
    if problems:
        raise CacheError(
            f"{'; '.join(problems)}; rerun the pipeline from the first stale stage (dvc repro does)"
        )
