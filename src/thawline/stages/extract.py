"""``extract``: run the frozen backbone once over every prepared item and cache the features.

A rerun with the same fingerprint (data, backbone, weights, transform, layers, dtype, precision)
reuses the cache without computing; an interrupted run resumes shard by shard; after a data
change only new or changed items go through the backbone (features/reuse.py). The cache's
layout belongs to :mod:`thawline.features.cache`; this stage decides what to compute where.
"""

from __future__ import annotations

import logging
import time

import torch

from thawline import distributed
from thawline.config import Config
from thawline.data.store import PreparedStore
from thawline.devices import resolve_device, resolve_precision
from thawline.distributed import World
from thawline.features.cache import (
    FeatureCache,
    ShardPlan,
    cache_is_complete,
    plan_shards,
    shard_is_reusable,
    write_manifest,
    write_shard,
)
from thawline.features.extractor import FeatureExtractor, batches, compute_mode
from thawline.features.reuse import FeatureBank, hashes_tensor, model_fingerprint
from thawline.files import remove_stale_temps, sha256_file, sha256_json
from thawline.models.backbone import create_backbone, weights_sha256
from thawline.models.preprocess import item_unit, preprocess_for
from thawline.progress import progress_bar
from thawline.run_stats import write_stats
from thawline.stage_table import StageResult
from thawline.stopping import deferred, interrupted, requested

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
    with distributed.join(resolve_device(cfg.extract.device, "extract.device")) as world:
        return _run(cfg, world, progress=progress and world.main)


def _run(cfg: Config, world: World, progress: bool) -> StageResult:
    out = cfg.paths.features
    store = PreparedStore(cfg.paths.prepared)
    extractor, parts = _extractor(cfg, store, world)
    fingerprint = sha256_json(parts)
    # Rank 0 hashes the cache for all: the answer is the same, the reading need not be.
    if world.share(world.main and cache_is_complete(out, fingerprint)):
        log.info("feature cache %s is up to date (fingerprint %s); nothing to compute",
                 out, fingerprint[:12])  # fmt: skip
        return _result(cfg, FeatureCache(out).manifest, computed=0, seconds=None)
    out.mkdir(parents=True, exist_ok=True)
    if world.main:
        remove_stale_temps(out)  # only rank 0: another rank's temp file may be in flight later
    plans = {s: plan_shards(s, store.count(s), cfg.extract.shard_size) for s in store.splits}
    mine = shards_of([p for split in plans.values() for p in split], world)
    data = {s: store.load(s) for s in {p.split for p in mine}}
    wanted = {h for p in mine for h in data[p.split].hashes[p.start : p.stop]}
    bank = FeatureBank.read(out, model_fingerprint(parts), wanted)
    world.barrier()  # every rank has read the old rows before any shard is overwritten
    if len(bank):
        log.info("reusing cached features of %d items whose content is unchanged", len(bank))
    widths = extractor.widths()  # in fp32, before warm_up may cast the network for tracing
    extractor.warm_up(cfg.extract.batch_size)
    started = time.perf_counter()
    total = sum(p.stop - p.start for split in plans.values() for p in split)
    unit = item_unit(extractor.preprocess)
    bar = progress_bar(total=total, desc="extract", unit=unit, disable=not progress)
    with bar, deferred():  # SIGTERM/SIGINT: stop after the shard in hand (thawline.stopping)
        written, computed, tokens = {}, 0, 0
        for done, plan in enumerate(mine, 1):
            sha256, n = _extract_shard(cfg, plan, data[plan.split], extractor, fingerprint, bank)
            written[plan.filename], computed = sha256, computed + n
            if unit == "doc" and n:  # documents/s alone hides how long they were
                mask = data[plan.split].tensors["attention_mask"][plan.start : plan.stop]
                tokens += int(mask.sum())
                rate = tokens / max(time.perf_counter() - started, 1e-9)
                bar.set_postfix_str(f"{rate:,.0f} tokens/s", refresh=False)
            # Rank 0's bar stands for all: the others keep pace.
            bar.update(min((plan.stop - plan.start) * world.size, bar.total - bar.n))
            if requested() and done < len(mine):
                raise interrupted(f"extract: {done} of {len(mine)} shards written to {out}; "
                                  "rerun (dvc repro, or thawline stage extract) to compute the "
                                  "rest")  # fmt: skip
    gathered = world.gather((written, computed))
    manifest = None
    if world.main:
        manifest = write_manifest(
            out, parts=parts, fingerprints=(fingerprint, model_fingerprint(parts)),
            layout=list(zip(["pre_logits", *extractor.layers], widths, strict=True)),
            classes=store.classes, device=extractor.device.type,
            splits={s: (store.count(s), plans[s]) for s in store.splits},
            digests={name: sha for shards, _ in gathered for name, sha in shards.items()},
        )  # fmt: skip
    world.barrier()  # no rank returns before the manifest is there
    computed = sum(n for _, n in gathered)
    manifest = manifest or FeatureCache(out).manifest
    return _result(cfg, manifest, computed, time.perf_counter() - started)


def _extractor(cfg: Config, store: PreparedStore, world: World):
    """The backbone's feature extractor for this config, and what its features depend on."""
    backbone = create_backbone(cfg.backbone)
    device = world.device(resolve_device(cfg.extract.device, "extract.device"))
    amp = resolve_precision(
        cfg.extract.precision, device, training=False, key="extract.precision"
    ).dtype
    preprocess = preprocess_for(
        backbone, cfg.extract.image_size, cfg.extract.crop_pct, store.tokens
    )
    layers = backbone.feature_layers() if cfg.extract.layers == "auto" else cfg.extract.layers
    parts = {
        "data": store.fingerprint,
        "backbone": backbone.name,
        "weights_sha256": weights_sha256(backbone),
        "transform": preprocess.spec(),
        "layers": layers,
        "dtype": cfg.extract.dtype,
        "precision": compute_mode(device, amp, cfg.extract.jit, store.modality == "text"),
    }
    if store.modality == "text":  # image fingerprints stay as they were
        parts["pooling"] = cfg.backbone.pooling
    extractor = FeatureExtractor(backbone, layers, preprocess, device, amp, cfg.extract.jit)
    return extractor, parts


def shards_of(plans: list[ShardPlan], world: World) -> list[ShardPlan]:
    """This rank's shards: each shard, largest first, goes to the rank with the fewest rows so
    far (one split's big shard and another's small one even out). Same answer on every rank."""
    load = [0] * world.size
    owner = {}
    for plan in sorted(plans, key=lambda p: p.start - p.stop):  # stable: ties keep plan order
        rank = load.index(min(load))
        owner[plan], load[rank] = rank, load[rank] + plan.stop - plan.start
    return [plan for plan in plans if owner[plan] == world.rank]


def _extract_shard(cfg, plan, data, extractor, fingerprint, bank) -> tuple[str, int]:
    """Compute (or reuse) one shard; returns its sha256 and the rows that went through the model."""
    folder = cfg.paths.features
    if shard_is_reusable(folder, fingerprint, plan):
        return sha256_file(folder / plan.filename), 0
    hashes = data.hashes[plan.start : plan.stop]
    known = [bank.get(h) for h in hashes]
    todo = [i for i, row in enumerate(known) if row is None]
    fresh = _compute(cfg, extractor, data.inputs[plan.start : plan.stop][todo])
    features = torch.empty((len(hashes), extractor.num_features), dtype=fresh.dtype)
    features[todo] = fresh
    if reused := [i for i, row in enumerate(known) if row is not None]:
        features[reused] = torch.stack([known[i] for i in reused])
    labels = data.labels[plan.start : plan.stop]
    digest = write_shard(folder, plan, fingerprint, features, labels, hashes_tensor(hashes))
    return digest, len(todo)


def _compute(cfg, extractor, inputs: torch.Tensor) -> torch.Tensor:
    """The backbone's features of ``inputs`` (uint8 images [n, 3, H, W] or tokens [n, 2, L]) in
    the cache dtype.

    Documents go through in order of length, so each batch is padded only to its longest
    (length bucketing); rows come back in their own order.
    """
    dtype = DTYPES[cfg.extract.dtype]
    order = torch.argsort(inputs[:, 1].sum(1), stable=True) if inputs.ndim == 3 else None
    ordered = inputs if order is None else inputs[order]
    rows = batches(ordered, 0, len(ordered), cfg.extract.batch_size, extractor.preprocess,
                   cfg.extract.num_workers)  # fmt: skip
    out = [extractor(x).to("cpu", dtype) for x in rows]  # shards are written from the CPU
    if not out:
        return torch.empty((0, extractor.num_features), dtype=dtype)
    features = torch.cat(out)
    if order is not None:
        features[order] = features.clone()
    return features


def _result(cfg: Config, manifest: dict, computed: int, seconds: float | None) -> StageResult:
    """Run statistics go to the metrics (MLflow, the stage's status) and ``paths.stats``, never
    into the cache: a resumed or repeated run that computes the same rows changes nothing.
    ``seconds=None``: the cache was up to date; the stats keep what making it cost."""
    rate = computed / seconds if seconds else 0.0
    stats = {"images_computed": computed, "images_per_second": rate,
             "seconds": round(seconds or 0.0, 2)}  # fmt: skip
    if seconds is not None and distributed.env_rank() == 0:
        write_stats(cfg.paths.stats, "extract", stats)
    return StageResult(
        outputs={"features": cfg.paths.features},
        metrics={k: float(v) for k, v in stats.items()},
        info={"fingerprint": manifest["fingerprint"], "num_features": manifest["num_features"]},
    )
