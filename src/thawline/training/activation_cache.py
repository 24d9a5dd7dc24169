"""The boundary-activation cache of thaw phases (``finetune.activation_cache``).

In a phase whose lowest groups stay frozen, the frozen part runs in eval mode (its BatchNorm on
running statistics), so its output for an image never changes: computing it every epoch is
waste. The backbone's forward chain (:meth:`Backbone.forward_stages`) is cut where the frozen
part ends; its output (the *boundary activations*) is computed once for ``activation_views``
views of every training image (the plain image, then flipped and shifted copies drawn as the
live augmentation draws them, seeded) and the phase trains only the top on them: each epoch
draws one view per image (seeded by seed, epoch and rank, so a resumed epoch draws the same).

Whether that pays is measured per phase: seconds per image of a live training step, of the
frozen part alone and of the top on activations, against the phase's epochs, the store's size
and ``activation_cache_gb``. The decision and its numbers are logged, recorded in the run and
kept in checkpoints (a resumed phase decides as it did). Stores are safetensors files, one per
view, under ``<checkpoints>/.activations/<fingerprint>``; the fingerprint covers the training
images, the frozen part's weights, the boundary, the input size, the views and the precision,
so a store is reused exactly when it would be rebuilt the same.

Text backbones cut the same way (:mod:`thawline.models.text_stages`): the state at the boundary
is the hidden states and the attention mask; one view is stored (text is never augmented), and
the frozen layers run in eval mode, so a cached phase trains without dropout below the boundary.
"""

from __future__ import annotations

import copy
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

from thawline.devices import autocast
from thawline.files import save_tensors, sha256_json, tensors_sha256
from thawline.models.backbone import kept_modes
from thawline.models.classifier import Classifier
from thawline.models.preprocess import Preprocess, channels_last, is_text, pool
from thawline.training.batches import training_batch
from thawline.training.frozen_forward import frozen_forward
from thawline.training.phases import Phase
from thawline.training.unfreeze import apply_phase, layer_names

log = logging.getLogger(__name__)

STORE_DTYPE = torch.float16
PAYS_BELOW = 0.9  # cache only when it is clearly faster than the live phase (timings are noisy)


class TopNetwork(nn.Module):
    """The classifier above the boundary: the chain's upper stages, the pooling, the head."""

    def __init__(self, model: Classifier, stages: list[nn.Module]):
        super().__init__()
        self.classifier, self.stages = model, nn.ModuleList(stages)

    def forward(self, h: Any) -> torch.Tensor:
        """``h``: the boundary state (image activations; text: hidden states and mask)."""
        h = channels_last(h) if isinstance(h, torch.Tensor) else h
        for stage in self.stages:
            h = stage(h)
        logits = self.classifier.head(pool(self.classifier.features.backbone.stage_output(h)))
        temperature = self.classifier.temperature
        return logits if temperature == 1.0 else logits / temperature


@dataclass
class Cut:
    """Where a phase's frozen part ends in the backbone's chain."""

    bottom: list[nn.Module]
    top: list[nn.Module]
    boundary: str  # the first stage of the top
    enter: Callable[[torch.Tensor], Any]  # the model input as the chain's first state


def cut_for(model: Classifier, groups: int) -> Cut | str:
    """The chain cut below the top ``groups`` layer groups, or why a phase cannot be cut."""
    if model.features.layers:
        return "extract.layers hooks layers below the boundary"
    chain = model.features.backbone.forward_stages()
    if chain is None:
        return "the backbone is not a chain of stages"
    names = layer_names(model)
    trainable = {n for g in names[len(names) - groups :] for n in g} if groups else set()
    params = [name for name, _ in model.features.backbone.model.named_parameters()]
    first = len(chain)
    for i, (stage, _) in enumerate(chain):
        if any(p.startswith(stage + ".") and p in trainable for p in params):
            first = i
            break
    if first == 0:
        return "no frozen stage below the thawed groups"
    boundary = chain[first][0] if first < len(chain) else "the pooling"
    backbone = model.features.backbone
    return Cut([m for _, m in chain[:first]], [m for _, m in chain[first:]], boundary,
               backbone.stage_input)  # fmt: skip


def bottom_forward(cut: Cut, x: torch.Tensor) -> Any:
    """The frozen part's output: activations, or for text ``(hidden states, mask)``."""
    h = cut.enter(x)
    for stage in cut.bottom:
        h = stage(h)
    return h


def view_count(opts, preprocess) -> int:
    """Views stored per item: flipped and shifted copies for images, one for text."""
    return opts.activation_views if opts.augment and preprocess.augmentable else 1


@dataclass
class ActivationStore:
    """Every training item's boundary activations, ``views[k, i]``, in ``STORE_DTYPE`` (text:
    hidden states at the training inputs' full length, and ``masks``, the inputs' own)."""

    views: torch.Tensor
    fingerprint: str
    masks: torch.Tensor | None = None

    def batch(self, rows: torch.Tensor, view: torch.Tensor, device: torch.device) -> Any:
        h = self.views[view, rows]
        if self.masks is None:
            return h.to(device, torch.float32)
        mask = self.masks[rows]  # trimmed to the batch's longest document, as live batches are
        longest = max(int(mask.sum(1).max()), 1)
        return h[:, :longest].to(device, torch.float32), mask[:, :longest].to(device).long()


def view_draws(count: int, views: int, seed: int, epoch: int, rank: int) -> torch.Tensor:
    """Which view each image shows in an epoch: its own seeded stream, so a resumed epoch
    (whose augmentation generator is restored mid-way) draws the same views."""
    mixed = np.random.SeedSequence([seed, epoch, rank, 0xAC])
    generator = torch.Generator().manual_seed(int(mixed.generate_state(1)[0]))
    return torch.randint(views, (count,), generator=generator)


def fingerprint(
    cut: Cut, preprocess: Preprocess, images: torch.Tensor, opts, seed, precision
) -> str:
    """What the store's contents depend on, hashed (not the trainable top: it may change)."""
    frozen = [(f"{i}.{k}", v) for i, m in enumerate(cut.bottom) for k, v in m.state_dict().items()]
    return sha256_json({
        "images": tensors_sha256([("images", images)]),
        "frozen": tensors_sha256(frozen),
        "boundary": cut.boundary,
        "size": preprocess.size,
        "views": view_count(opts, preprocess),
        "max_shift": opts.max_shift,
        "seed": seed,
        "precision": precision.name,
        "dtype": str(STORE_DTYPE),
    })  # fmt: skip


@torch.no_grad()  # not inference_mode: its tensors could not feed training afterwards
def build_store(
    cut: Cut, preprocess: Preprocess, images: torch.Tensor, opts, seed: int, precision,
    device: torch.device, folder: Path, digest: str,
) -> ActivationStore:  # fmt: skip
    """Load the store of ``digest`` from ``folder``, or compute and write it."""
    views = view_count(opts, preprocess)
    files = [folder / digest / f"view-{k}.safetensors" for k in range(views)]
    masks = images[:, 1].to(torch.uint8) if is_text(preprocess) else None
    if all(f.is_file() for f in files):
        log.info("finetune: reusing the boundary activations in %s", folder / digest)
        return ActivationStore(torch.stack([load_file(f)["h"] for f in files]), digest, masks)
    started = time.perf_counter()
    # Every module's own mode, restored afterwards (a text chain's stages wrap the layers).
    with kept_modes(cut.bottom):
        for stage in cut.bottom:  # as in training: frozen BatchNorm on its running statistics
            stage.eval()
        out = _compute(cut, preprocess, images, opts, seed, precision, device, views)
    for k, path in enumerate(files):
        path.parent.mkdir(parents=True, exist_ok=True)
        save_tensors(path, {"h": out[k]}, {"boundary": cut.boundary, "view": str(k)})
    log.info("finetune: boundary activations at %s (%s per image) of %d images x %d views "
             "computed in %.1f s: %s", cut.boundary, tuple(out.shape[2:]), len(images), views,
             time.perf_counter() - started, folder / digest)  # fmt: skip
    return ActivationStore(out, digest, masks)


def _compute(cut, preprocess, images, opts, seed, precision, device, views: int) -> torch.Tensor:
    """``[views, N, C, H, W]``: view 0 plain, view k flipped and shifted as training draws
    (text: ``[1, N, L, D]``, every document's hidden states padded to the inputs' length)."""
    batch, out, forward = 256, None, None
    eager = partial(bottom_forward, cut)
    for k in range(views):
        generator = torch.Generator().manual_seed(seed * 7919 + k)
        for start in range(0, len(images), batch):
            x = training_batch(
                images[start : start + batch].to(device), preprocess, augment=k > 0,
                max_shift=opts.max_shift, generator=generator,
            )  # fmt: skip
            forward = forward or frozen_forward(cut.bottom, cut.enter, eager, x, precision)
            with autocast(device, precision):
                h = _stored(forward(x), images.shape[-1]).to("cpu", STORE_DTYPE)
            if out is None:
                out = torch.empty((views, len(images), *h.shape[1:]), dtype=STORE_DTYPE)
            out[k, start : start + len(h)] = h
    assert out is not None
    return out


def _stored(state: Any, length: int) -> torch.Tensor:
    """What the store keeps of a boundary state: image activations as they are; a text
    batch's hidden states (trimmed to its longest document) padded back to ``length``."""
    if isinstance(state, torch.Tensor):
        return state
    hidden = state[0]
    return F.pad(hidden, (0, 0, 0, length - hidden.shape[1]))


def prune_stores(folder: Path, keep: set[str]) -> None:
    """Remove the stores of other fingerprints (older weights, another boundary)."""
    for other in folder.iterdir() if folder.is_dir() else []:
        if other.is_dir() and other.name not in keep:
            shutil.rmtree(other, ignore_errors=True)


def measure(
    model: Classifier, groups: int, preprocess: Preprocess, images: torch.Tensor,
    labels: torch.Tensor, batch: int, precision, device: torch.device, freeze_bn: bool,
    train_depthwise: bool = True,
) -> dict[str, float]:  # fmt: skip
    """Seconds per image of a live training step, of the frozen part alone and of a step of
    the top, timed on a copy of the model (its BatchNorm statistics and the caller's random
    state stay as they are)."""
    twin = copy.deepcopy(model).train()
    apply_phase(twin, Phase(groups, 1, 1.0), freeze_bn=freeze_bn, train_depthwise=train_depthwise)
    cut = cut_for(twin, groups)
    assert isinstance(cut, Cut)
    top, loss_fn = TopNetwork(twin, cut.top), nn.CrossEntropyLoss()
    with torch.random.fork_rng(devices=[]):
        x = training_batch(images[:batch].to(device), preprocess, augment=False,
                           max_shift=0, generator=torch.Generator())  # fmt: skip
        y = labels[:batch].to(device)

        def live():
            with autocast(device, precision):
                loss_fn(twin.network(x).float(), y).backward()

        def frozen():
            with torch.inference_mode(), autocast(device, precision):
                return bottom_forward(cut, x)

        h = _clone(frozen())

        def cached():
            with autocast(device, precision):
                loss_fn(top(h).float(), y).backward()

        steps = (("live", live), ("frozen", frozen), ("top", cached))
        timed = {name: _seconds_per_image(fn, len(y)) for name, fn in steps}
    row = _stored(h, images.shape[-1])[0]  # text: at the inputs' full length, as stored
    return timed | {"bytes_per_image": row.numel() * STORE_DTYPE.itemsize}


def _clone(state: Any) -> Any:
    """A normal (not inference-mode) copy of a boundary state, to train the top on."""
    return state.clone() if isinstance(state, torch.Tensor) else tuple(t.clone() for t in state)


def _seconds_per_image(fn, count: int, steps: int = 2) -> float:
    fn()  # warm-up: oneDNN picks its kernels on the first call
    started = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - started) / (steps * count)


def decide(seconds: dict[str, float], count: int, epochs: int, views: int,
           budget_gb: float) -> tuple[bool, str]:  # fmt: skip
    """Whether caching pays for a phase of ``epochs`` epochs over ``count`` images."""
    live = epochs * count * seconds["live"]
    cached = views * count * seconds["frozen"] + epochs * count * seconds["top"]
    size = views * count * seconds["bytes_per_image"]
    build = views * count * seconds["frozen"]
    numbers = (f"live {live:.0f} s, cached {cached:.0f} s ({views} view(s) built in {build:.0f}"
               f" s), store {size / 2**30:.2f} GiB")  # fmt: skip
    if size > budget_gb * 2**30:
        return False, f"{numbers}: over activation_cache_gb {budget_gb}"
    if cached >= PAYS_BELOW * live:
        return False, f"{numbers}: does not pay"
    return True, numbers
