"""``extract``: run the frozen backbone once over every prepared image and cache the features.

A rerun with the same fingerprint (data, backbone, weights, transform, layers, dtype, precision)
reuses the cache without computing; an interrupted run resumes shard by shard; after a data
change only new or changed images go through the backbone (features/reuse.py).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from thawline.config import Config
from thawline.data.store import SPLITS, load_split, read_manifest
from thawline.features.cache import (
    cache_is_complete,
    plan_shards,
    read_cache_manifest,
    remove_unlisted_shards,
    shard_is_reusable,
    tensors_sha256,
)
from thawline.features.extract import (
    FeatureExtractor,
    Preprocess,
    batches,
    compute_mode,
    pick_device,
    pick_precision,
)
from thawline.features.reuse import FeatureBank, hashes_tensor, model_fingerprint
from thawline.files import (
    remove_stale_temps,
    save_tensors,
    sha256_file,
    sha256_json,
    write_json,
)
from thawline.models.backbone import create_backbone, weights_sha256
from thawline.stages import StageResult

log = logging.getLogger(__name__)
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def run(cfg: Config, *, progress: bool = True) -> StageResult:
    """Extract features for every prepared split into ``cfg.paths.features``.

    Raises:
        StoreError: No prepared data.
        WeightsError: Backbone weights cannot be loaded.
    """
    out = cfg.paths.features
    prepared = read_manifest(cfg.paths.prepared)
    backbone = create_backbone(cfg.backbone)
    device = pick_device(cfg.extract.device)
    amp = pick_precision(cfg.extract.precision, device)
    preprocess = Preprocess.from_backbone(backbone, cfg.extract.image_size, cfg.extract.crop_pct)
    layers = backbone.feature_layers() if cfg.extract.layers == "auto" else cfg.extract.layers
    parts = _fingerprint_parts(cfg, prepared, backbone, preprocess, layers, device, amp)
    fingerprint = sha256_json(parts)
    if cache_is_complete(out, fingerprint):
        log.info(
            "feature cache %s is up to date (fingerprint %s); nothing to compute",
            out,
            fingerprint[:12],
        )
        return _result(out, read_cache_manifest(out), computed=0, seconds=0.0)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    bank = FeatureBank.read(out, model_fingerprint(parts))  # before any shard is overwritten
    if len(bank):
        log.info("reusing cached features of %d images whose content is unchanged", len(bank))
    extractor = FeatureExtractor(backbone, layers, preprocess, device, amp, cfg.extract.jit)
    widths = extractor.widths()
    extractor.warm_up(cfg.extract.batch_size)
    started, computed = time.perf_counter(), 0
    splits = {}
    for split in (s for s in SPLITS if s in prepared["splits"]):
        shards, n = _extract_split(cfg, split, extractor, preprocess, fingerprint, bank, progress)
        splits[split] = {"count": prepared["splits"][split]["count"], "shards": shards}
        computed += n
    seconds = time.perf_counter() - started
    manifest = {
        "version": 1,
        "fingerprint": fingerprint,
        "model_fingerprint": model_fingerprint(parts),
        "fingerprint_parts": parts,
        "num_features": sum(widths),
        "layout": [
            {"name": n, "width": w} for n, w in zip(["pre_logits", *layers], widths, strict=True)
        ],
        "classes": prepared["classes"],
        "device": device.type,
        "splits": splits,
        "images_computed": computed,
        "seconds": round(seconds, 2),
    }
    write_json(out / "manifest.json", manifest)
    remove_unlisted_shards(out, manifest)
    return _result(out, manifest, computed, seconds)


def _extract_split(cfg, split, extractor, preprocess, fingerprint, bank, progress):
    """Compute (or reuse) every shard of one split; returns the shard list and rows computed."""
    data = load_split(cfg.paths.prepared, split)
    shards, computed = [], 0
    bar = tqdm(total=len(data.keys), desc=f"extract {split}", unit="img", disable=not progress)
    for plan in plan_shards(split, len(data.keys), cfg.extract.shard_size):
        path = cfg.paths.features / plan.filename
        if not shard_is_reusable(path, fingerprint, plan):
            hashes = data.hashes[plan.start : plan.stop]
            known = [bank.get(h) for h in hashes]
            todo = [i for i, row in enumerate(known) if row is None]
            fresh = _compute(cfg, extractor, preprocess, data.images[plan.start : plan.stop][todo])
            features = torch.empty((len(hashes), extractor.num_features), dtype=fresh.dtype)
            features[todo] = fresh
            if reused := [i for i, row in enumerate(known) if row is not None]:
                features[reused] = torch.stack([known[i] for i in reused])
            tensors = {
                "features": features,
                "labels": data.labels[plan.start : plan.stop],
                "hashes": hashes_tensor(hashes),
            }
            meta = {
                "fingerprint": fingerprint,
                "split": split,
                "rows": f"{plan.start}:{plan.stop}",
                "content_sha256": tensors_sha256(tensors),
            }
            save_tensors(path, tensors, meta)
            computed += len(todo)
        bar.update(plan.stop - plan.start)
        shards.append({"file": plan.filename, "rows": plan.stop - plan.start,
                       "sha256": sha256_file(path)})  # fmt: skip
    bar.close()
    return shards, computed


def _compute(cfg, extractor, preprocess, images: torch.Tensor) -> torch.Tensor:
    """The backbone's features of ``images`` (uint8 [n, 3, H, W]) in the cache dtype."""
    dtype = DTYPES[cfg.extract.dtype]
    rows = batches(images, 0, len(images), cfg.extract.batch_size, preprocess,
                   cfg.extract.num_workers)  # fmt: skip
    out = [extractor(x).to(dtype) for x in rows]
    return torch.cat(out) if out else torch.empty((0, extractor.num_features), dtype=dtype)


def _fingerprint_parts(cfg, prepared, backbone, preprocess, layers, device, amp) -> dict:
    return {
        "data": prepared["fingerprint"],
        "backbone": backbone.name,
        "weights_sha256": weights_sha256(backbone),
        "transform": {
            "size": preprocess.size,
            "crop_pct": preprocess.crop_pct,
            "interpolation": preprocess.interpolation,
            "mean": preprocess.mean,
            "std": preprocess.std,
        },
        "layers": layers,
        "dtype": cfg.extract.dtype,
        "precision": compute_mode(device, amp, cfg.extract.jit),
    }


def _result(out: Path, manifest: dict, computed: int, seconds: float) -> StageResult:
    rate = computed / seconds if seconds else 0.0
    return StageResult(
        outputs={"features": out},
        metrics={"images_computed": float(computed), "images_per_second": rate},
        info={"fingerprint": manifest["fingerprint"], "num_features": manifest["num_features"]},
    )
