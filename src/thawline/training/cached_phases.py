"""Thaw phases on cached boundary activations, for the fine-tuning trainer
(``finetune.activation_cache``; the cache itself: :mod:`thawline.training.activation_cache`)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch

from thawline.devices import autocast
from thawline.models.backbone import kept_modes
from thawline.models.classifier import Classifier
from thawline.models.preprocess import channels_last
from thawline.training.activation_cache import (
    ActivationStore,
    Cut,
    TopNetwork,
    bottom_forward,
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
class ValidationStates:
    """The validation items' boundary states, one per validation batch, as the live frozen part
    hands them to the top (float32 or the autocast dtype, never rounded to the store's float16):
    a cached validation scores what a live one scores, so every epoch compares with epoch 0."""

    frozen: list[torch.Tensor]  # the frozen part's weights and buffers they were computed with
    states: list[Any]


@dataclass
class PhaseSource:
    """What a cached phase trains (the top) and on what (the store), for one timeline run."""

    run: int
    groups: int
    top: TopNetwork
    store: ActivationStore
    val: ValidationStates | None = None  # computed at the run's first validation

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
        self._source = PhaseSource(run, self.timeline.phases[phase].groups,
                                   TopNetwork(self.model, cut.top), store)  # fmt: skip
        return self._source

    @torch.inference_mode()
    def _cached_val_logits(self, model: Classifier) -> torch.Tensor | None:
        """``model``'s validation logits from the cached run's validation states (computed at
        its first validation), or None to validate live: no cached run, or ``model``'s frozen
        part is not the one they came from (an EMA average that trained it in an earlier
        phase, weights rolled back to such an epoch)."""
        source = self._source
        if source is None or self.val is None or self.world.size > 1:
            return None
        cut = cut_for(model, source.groups)
        if not isinstance(cut, Cut):
            return None
        if source.val is None:
            source.val = self._validation_states(cut)
        if not source.val.states or not _same(source.val.frozen, _frozen_state(cut)):
            return None
        model.eval()
        top = TopNetwork(model, cut.top)
        logits = []
        for state in source.val.states:
            with autocast(self.device, self.precision):
                logits.append(top(state).float().cpu())
        return torch.cat(logits)

    def _validation_states(self, cut: Cut) -> ValidationStates:
        """The frozen part's output for every validation batch (batches as the live
        validation's), kept in memory; none when they would exceed ``activation_cache_gb``."""
        images, budget = self.val[0], self.opts.activation_cache_gb * 2**30
        states, size, done, started = [], 0, 0, time.perf_counter()
        with kept_modes(cut.bottom):
            for stage in cut.bottom:  # as the live validation runs them: model.eval()
                stage.eval()
            for chunk in images.split(self.val_batch_size):
                x = chunk.to(self.device)
                x = channels_last(x if x.is_floating_point() else self.model.preprocess(x))
                with autocast(self.device, self.precision):
                    states.append(bottom_forward(cut, x))
                size, done = size + _bytes(states[-1]), done + len(chunk)
                if size * len(images) / done > budget:
                    log.info("finetune: validation runs live: its boundary states would "
                             "take more than activation_cache_gb (%.1f GiB)",
                             budget / 2**30)  # fmt: skip
                    return ValidationStates([], [])
        log.info("finetune: validation states of %d items at %s computed in %.1f s (%.2f GiB): "
                 "each validation runs only the top", len(images), cut.boundary,
                 time.perf_counter() - started, size / 2**30)  # fmt: skip
        return ValidationStates([v.clone() for v in _frozen_state(cut)], states)

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


def _frozen_state(cut: Cut) -> list[torch.Tensor]:
    return [v for m in cut.bottom for v in m.state_dict().values()]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def _bytes(state: Any) -> int:
    parts = state if isinstance(state, tuple | list) else (state,)
    return sum(t.numel() * t.element_size() for t in parts if isinstance(t, torch.Tensor))
