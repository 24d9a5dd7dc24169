"""The complete model the trained head describes, and the check that a head fits its features.

The backbone and weights come from the config, the hooked layers and exact preprocessing from the
feature cache, the head from ``train_head``; every piece is checked to belong together. Shared by
``finetune`` and ``register`` (the model) and ``evaluate`` (the check).
"""

from __future__ import annotations

from pathlib import Path

from thawline.config import Config
from thawline.data.store import PreparedStore
from thawline.errors import CacheError, EvaluationError
from thawline.features.cache import MANIFEST, FeatureCache
from thawline.models.backbone import weights_sha256
from thawline.models.classifier import Classifier, build_classifier
from thawline.models.preprocess import preprocess_for, preprocess_from_spec
from thawline.models.storage import head_files, load_head


def build_model(cfg: Config) -> Classifier:
    """The complete classifier for the trained head, checked against the feature cache.

    Raises:
        CacheError: The features are of other data, another backbone, other weights or other
            preprocessing than the config gives.
        EvaluationError: The head does not fit the features (see :func:`check_head`).
    """
    cache, store = FeatureCache(cfg.paths.features), PreparedStore(cfg.paths.prepared)
    head, meta = load_head(cfg.paths.head)
    check_head(cfg.paths.head, head.spec(), meta, cache, store)
    if cache.parts["backbone"] != cfg.backbone.name:
        raise CacheError(
            f"{cache.folder / MANIFEST}: the features come from {cache.parts['backbone']}, not "
            f"backbone.name={cfg.backbone.name}; rerun extract and train_head"
        )
    model = build_classifier(
        cfg.backbone.name, cfg.backbone.weights, cache.layers,
        preprocess_from_spec(cache.parts["transform"]), head, cache.classes, store.image_size,
        cfg.backbone.pooling,
    )  # fmt: skip
    backbone = model.features.backbone
    if weights_sha256(backbone) != cache.parts["weights_sha256"]:
        raise CacheError(
            f"{cfg.paths.features}: the features come from other {cfg.backbone.name} weights than "
            f"backbone.weights={cfg.backbone.weights}; rerun extract and train_head"
        )
    configured = preprocess_for(
        backbone, cfg.extract.image_size, cfg.extract.crop_pct, store.tokens
    )
    if configured != model.preprocess:
        raise CacheError(
            f"{cfg.paths.features}: extracted with preprocessing {model.preprocess.spec()}, but "
            f"the config now gives {configured.spec()}; rerun extract and train_head"
        )
    return model.eval()


def check_head(
    folder: Path, spec: dict, meta: dict, cache: FeatureCache, store: PreparedStore
) -> None:
    """The head in ``folder`` fits the cached features and the prepared data.

    Raises:
        CacheError: The features were extracted from other prepared data.
        EvaluationError: The head was trained on other features, takes another width, or
            predicts another number of classes; the message says which stage to rerun.
    """
    spec_file = head_files(folder).spec
    if cache.parts.get("data") != store.fingerprint:
        raise CacheError(
            f"{cache.folder / MANIFEST}: the features were extracted from other prepared data "
            f"than {store.folder}; rerun 'thawline stage extract'"
        )
    trained_on = meta.get("feature_fingerprint")  # absent in heads saved by hand
    if trained_on is not None and trained_on != cache.fingerprint:
        raise EvaluationError(
            f"{spec_file}: the head was trained on other features ({trained_on[:12]}) than "
            f"{cache.folder} holds ({cache.fingerprint[:12]}); rerun 'thawline stage train_head'"
        )
    if spec["in_features"] != cache.num_features:
        raise EvaluationError(
            f"{spec_file}: the head takes {spec['in_features']} features but the cache has "
            f"{cache.num_features}; the features changed since training, rerun "
            "'thawline stage train_head'"
        )
    if spec["num_classes"] != len(store.classes):
        raise EvaluationError(
            f"{spec_file}: the head predicts {spec['num_classes']} classes but the data has "
            f"{len(store.classes)}; rerun 'thawline stage train_head'"
        )
