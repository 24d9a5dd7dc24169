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

from thawline import distributed
from thawline.config import Config
from thawline.data.store import SPLITS, load_split, read_manifest
from thawline.distributed import World
from thawline.features.cache import (
    ShardPlan,
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

    Under torchrun the shards are shared out between the ranks by rows; each rank writes its own
    (atomically), and rank 0 writes the manifest once every rank is done. Shard boundaries
    depend only on ``extract.shard_size`` and each shard is computed in the same batches, so
    the cache is the same, bit for bit, with any number of processes.

    Raises:
        StoreError: No prepared data.
        WeightsError: Backbone weights cannot be loaded.
    """
    with distributed.join(pick_device(cfg.extract.device)) as world:
        return _run(cfg, world, progress=progress and world.main)


def _run(cfg: Config, world: World, progress: bool) -> StageResult:
    out = cfg.paths.features
    prepared = read_manifest(cfg.paths.prepared)
    backbone = create_backbone(cfg.backbone)
    device = world.device(pick_device(cfg.extract.device))
    amp = pick_precision(cfg.extract.precision, device)
    preprocess = Preprocess.from_backbone(backbone, cfg.extract.image_size, cfg.extract.crop_pct)
    layers = backbone.feature_layers() if cfg.extract.layers == "auto" else cfg.extract.layers
    parts = _fingerprint_parts(cfg, prepared, backbone, preprocess, layers, device, amp)
    fingerprint = sha256_json(parts)
    # Rank 0 hashes the cache for all: the answer is the same, the reading need not be.
    if world.share(world.main and cache_is_complete(out, fingerprint)):
        log.info(
            "feature cache %s is up to date (fingerprint %s); nothing to compute",
            out,
            fingerprint[:12],
        )
        return _result(out, read_cache_manifest(out), computed=0, seconds=0.0)
    out.mkdir(parents=True, exist_ok=True)
    if world.main:
        remove_stale_temps(out)  # only rank 0: another rank's temp file may be in flight later
    splits = [s for s in SPLITS if s in prepared["splits"]]
    plans = [p for s in splits for p in plan_shards(s, prepared["splits"][s]["count"],
                                                    cfg.extract.shard_size)]  # fmt: skip
    mine = shards_of(plans, world)
    data = {s: load_split(cfg.paths.prepared, s) for s in {p.split for p in mine}}
    wanted = {h for p in mine for h in data[p.split].hashes[p.start : p.stop]}
    bank = FeatureBank.read(out, model_fingerprint(parts), wanted)
    world.barrier()  # every rank has read the old rows before any shard is overwritten
    if len(bank):
        log.info("reusing cached features of %d images whose content is unchanged", len(bank))
    extractor = FeatureExtractor(backbone, layers, preprocess, device, amp, cfg.extract.jit)
    widths = extractor.widths()
    extractor.warm_up(cfg.extract.batch_size)
    started = time.perf_counter()
    total = sum(p.stop - p.start for p in plans)
    with tqdm(total=total, desc="extract", unit="img", disable=not progress) as bar:
        written, computed = {}, 0
        for plan in mine:
            sha256, n = _extract_shard(cfg, plan, data[plan.split], extractor, fingerprint, bank)
            written[plan.filename], computed = sha256, computed + n
            # Rank 0's bar stands for all: the others keep pace.
            bar.update(min((plan.stop - plan.start) * world.size, bar.total - bar.n))
    gathered = world.gather((written, computed))
    seconds = time.perf_counter() - started
    digests = {name: sha for shards, _ in gathered for name, sha in shards.items()}
    computed = sum(n for _, n in gathered)
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
        "splits": {s: _split_entry(prepared, s, plans, digests) for s in splits},
        "images_computed": computed,
        "seconds": round(seconds, 2),
    }
    if world.main:
        write_json(out / "manifest.json", manifest)
        remove_unlisted_shards(out, manifest)
    world.barrier()  # no rank returns before the manifest is there
    return _result(out, manifest, computed, seconds)


def shards_of(plans: list[ShardPlan], world: World) -> list[ShardPlan]:
    """This rank's shards: each shard, largest first, goes to the rank with the fewest rows so
    far (one split's big shard and another's small one even out). Same answer on every rank."""
    load = [0] * world.size
    owner = {}
    for plan in sorted(plans, key=lambda p: p.start - p.stop):  # stable: ties keep plan order
        rank = load.index(min(load))
        owner[plan], load[rank] = rank, load[rank] + plan.stop - plan.start
    return [plan for plan in plans if owner[plan] == world.rank]


def _split_entry(prepared: dict, split: str, plans: list, digests: dict[str, str]) -> dict:
    """A split's manifest entry: its count and its shards in order, with their sha256."""
    shards = [
        {"file": p.filename, "rows": p.stop - p.start, "sha256": digests[p.filename]}
        for p in plans
        if p.split == split
    ]
    return {"count": prepared["splits"][split]["count"], "shards": shards}


def _extract_shard(cfg, plan, data, extractor, fingerprint, bank) -> tuple[str, int]:
    """Compute (or reuse) one shard; returns its sha256 and the rows that went through the model."""
    path = cfg.paths.features / plan.filename
    if shard_is_reusable(path, fingerprint, plan):
        return sha256_file(path), 0
    hashes = data.hashes[plan.start : plan.stop]
    known = [bank.get(h) for h in hashes]
    todo = [i for i, row in enumerate(known) if row is None]
    fresh = _compute(cfg, extractor, data.images[plan.start : plan.stop][todo])
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
        "split": plan.split,
        "rows": f"{plan.start}:{plan.stop}",
        "content_sha256": tensors_sha256(tensors),
    }
    return save_tensors(path, tensors, meta), len(todo)


def _compute(cfg, extractor, images: torch.Tensor) -> torch.Tensor:
    """The backbone's features of ``images`` (uint8 [n, 3, H, W]) in the cache dtype."""
    dtype = DTYPES[cfg.extract.dtype]
    rows = batches(images, 0, len(images), cfg.extract.batch_size, extractor.preprocess,
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
