"""Thaw phases on cached boundary activations, for the fine-tuning trainer
(``finetune.activation_cache``; the cache itself: :mod:`thawline.training.activation_cache`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from thawline.training.activation_cache import (
    ActivationStore,
    Cut,
    TopNetwork,
    build_store,
    cut_for,
    decide,
    fingerprint,
    measure,
    prune_stores,
    view_count,
    view_draws,
)
from thawline.training.mixing import uses_mixing

log = logging.getLogger(__name__)
MIN_STEPS = 50  # auto: shorter phases run live unmeasured (timing them costs ~10 steps)


@dataclass
class PhaseSource:
    """What a cached phase trains (the top) and on what (the store), for one timeline run."""

    run: int
    top: TopNetwork
    store: ActivationStore

    def batch(self, rows: torch.Tensor, views: torch.Tensor, device) -> torch.Tensor:
        return self.store.batch(rows, views[rows], device)


class ActivationCaching:
    """Per timeline run: decide (once, checkpointed) whether the phase trains on cached
    activations, and build or load the store when it does."""

    activation_plans: dict[str, dict]  # run index -> the decision and its numbers
    _source: PhaseSource | None = None

    def _phase_source(self, run: int, phase: int) -> PhaseSource | None:
        """The cached path of timeline run ``run`` (of ``phase``), or None to train live."""
        if self._source is not None and self._source.run == run:
            return self._source
        self._source = None  # the last run's store goes: a new boundary needs another
        plan = self.activation_plans.get(str(run))
        if plan is None:
            plan = self.activation_plans[str(run)] = self._plan_phase(phase)
        if not plan["cached"]:
            return None
        cut = cut_for(self.model, self.timeline.phases[phase].groups)
        assert isinstance(cut, Cut)
        images, preprocess = self.train[0], self._phase_preprocess(phase)
        digest = fingerprint(cut, preprocess, images, self.opts, self.seed, self.precision)
        folder = self.folder.parent / ".activations"
        prune_stores(folder, {p.get("store") for p in self.activation_plans.values()} | {digest})
        store = build_store(cut, preprocess, images, self.opts, self.seed, self.precision,
                            self.device, folder, digest)  # fmt: skip
        plan["store"] = digest
        self._source = PhaseSource(run, TopNetwork(self.model, cut.top), store)
        return self._source

    def _plan_phase(self, phase: int) -> dict:
        groups = self.timeline.phases[phase].groups
        plan = {"phase": phase + 1, "groups": groups, "cached": False}
        mode, cut = self.opts.activation_cache, cut_for(self.model, groups)
        if mode == "never":
            return plan | {"why": "activation_cache: never"}
        if uses_mixing(self.opts):
            return plan | {"why": "mixup, cutmix or randaugment: every step draws a new view"}
        if self.world.size > 1:
            return plan | {"why": "torchrun runs phases live"}
        if isinstance(cut, str):
            return plan | {"why": cut}
        plan["boundary"] = cut.boundary
        if mode == "always":
            return plan | {"cached": True, "why": "activation_cache: always"}
        epochs = self.timeline.phases[phase].epochs
        if epochs * self.steps < MIN_STEPS:
            why = f"{epochs * self.steps} steps: too short to pay back the build (or a measurement)"
            return plan | {"why": why}
        images, labels = self.train
        timed = measure(self.model, groups, self._phase_preprocess(phase), images, labels,
                        self.rank_batch, self.precision, self.device,
                        self.opts.freeze_bn, self.opts.train_depthwise)  # fmt: skip
        views = view_count(self.opts, self.model.preprocess)
        cached, why = decide(timed, len(labels), epochs, views, self.opts.activation_cache_gb)
        log.info("finetune: phase %d (top %d groups, frozen below %s): %s (%s)", phase + 1,
                 groups, cut.boundary, "cached activations" if cached else "live",
                 why)  # fmt: skip
        return plan | {"cached": cached, "why": why, "seconds_per_image": timed}

    def _view_draws(self) -> torch.Tensor:
        views = view_count(self.opts, self.model.preprocess)
        return view_draws(len(self.train[1]), views, self.seed, self.epoch, self.world.rank)
