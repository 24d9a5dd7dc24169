"""The retrain policy: whether the data source changed, and whether a change needs a fine-tune.

The retrain flow (``pipelines/retrain.py``) only calls these; every decision and its reason is
made here, below the flows, where tests reach it without Prefect.
"""

from __future__ import annotations

from dataclasses import dataclass

from thawline.config import Config
from thawline.data.sources import chosen_items, open_source, source_fingerprint
from thawline.data.store import PreparedStore
from thawline.errors import StoreError
from thawline.models.storage import read_head_meta
from thawline.training.strategy import StrategyChoice, probe_accuracy, should_escalate


@dataclass(frozen=True)
class SourceCheck:
    changed: bool
    reason: str


def source_changed(cfg: Config) -> SourceCheck:
    """Whether the data source differs from what ``paths.prepared`` was made from.

    Hashes every chosen item's content (not size or mtime, which DVC's state keys on), so an
    image rewritten in place counts. Reads every file once; decodes nothing.
    """
    try:
        recorded = PreparedStore(cfg.paths.prepared).source_fingerprint
    except StoreError:
        return SourceCheck(True, f"no prepared data in {cfg.paths.prepared} yet")
    source = open_source(cfg.data, cfg.prepare)
    chosen = chosen_items(source, cfg.prepare.limit_per_class, cfg.seed)
    if source_fingerprint(source, chosen) == recorded:
        return SourceCheck(False, f"the {len(chosen)} source images are unchanged")
    return SourceCheck(True, f"the source changed ({len(chosen)} images now)")


def escalation(cfg: Config) -> StrategyChoice:
    """After the head is retrained: fine-tune too (``strategy`` "finetune") or not, and why."""
    probe = probe_accuracy(read_head_meta(cfg.paths.head))
    return should_escalate(cfg.retrain.finetune, cfg.retrain.escalate_below, probe)
