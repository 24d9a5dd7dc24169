"""Running a frozen backbone over the prepared uint8 images, fast.

The fast path: eval mode, ``inference_mode``, channels_last, bf16 autocast on CPUs with native
bf16 (fp16/bf16 on CUDA), resizing in DataLoader workers so it overlaps with the model, and
forward hooks that pool intermediate layers inside the same forward pass.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import torch
from torch.utils.data import DataLoader, Dataset

from thawline.errors import ConfigError
from thawline.models.backbone import Backbone
from thawline.models.preprocess import PooledFeatures, Preprocess, channels_last, is_text

log = logging.getLogger(__name__)


class _Rows(Dataset):
    """Batches of prepared rows, preprocessed in a worker so resizing overlaps with the model."""

    def __init__(self, images: torch.Tensor, start: int, stop: int, batch: int, fn: Preprocess):
        self.images, self.start, self.stop, self.batch, self.fn = images, start, stop, batch, fn

    def __len__(self) -> int:
        return math.ceil((self.stop - self.start) / self.batch)

    def __getitem__(self, i: int) -> torch.Tensor:
        lo = self.start + i * self.batch
        return self.fn.resize(self.images[lo : min(lo + self.batch, self.stop)])


def uses_jit(device: torch.device, amp: torch.dtype | None, jit: bool) -> bool:
    """Whether the backbone runs as frozen bf16 TorchScript (CPU with native bf16 only)."""
    return jit and device.type == "cpu" and amp == torch.bfloat16


def bf16_weights(device: torch.device, amp: torch.dtype | None, text: bool) -> bool:
    """Whether a text encoder runs with its weights cast to bf16 (CPU with native bf16): autocast
    would cast every weight again in every batch."""
    return text and device.type == "cpu" and amp == torch.bfloat16


def compute_mode(
    device: torch.device, amp: torch.dtype | None, jit: bool, text: bool = False
) -> str:
    """How features are computed, for the fingerprint: the numbers differ between modes."""
    if bf16_weights(device, amp, text):
        return "bf16-weights"
    if uses_jit(device, amp, jit):
        return "bf16-weights-jit"
    return f"autocast-{str(amp).removeprefix('torch.')}" if amp else "float32"


class FeatureExtractor:
    """Pooled pre-logits plus pooled hooked layers, concatenated, from one forward pass.

    On a CPU with native bf16 the backbone is cast to bf16, traced and frozen with TorchScript
    (which folds BatchNorm into the convolutions): about twice the throughput of eager autocast
    here. Elsewhere it runs eagerly under autocast.
    """

    def __init__(
        self,
        backbone: Backbone,
        layers: list[str],
        preprocess: Preprocess,
        device: torch.device,
        amp: torch.dtype | None,
        jit: bool = True,
    ):
        modules = dict(backbone.model.named_modules())
        unknown = [name for name in layers if name not in modules]
        if unknown:
            raise ConfigError(
                f"extract.layers: {unknown} are not modules of {backbone.name}; "
                f"hookable stages: {backbone.feature_layers()}"
            )
        self.device, self.amp, self.layers, self.preprocess = device, amp, layers, preprocess
        self.net = PooledFeatures(backbone, layers).eval().requires_grad_(False).to(device)
        # Token ids in: no channels-last layout, no tracing (SDPA attention runs eagerly).
        self.text = is_text(preprocess)
        if not self.text:
            self.net = self.net.to(memory_format=torch.channels_last)
        elif bf16_weights(device, amp, self.text):
            self.net = self.net.to(torch.bfloat16)
            self.amp = None  # already in bf16: no autocast
        self.input_dtype = torch.float32
        self._traced: torch.jit.ScriptModule | None = None
        self._jit = uses_jit(device, amp, jit) and not self.text

    def _trace(self, x: torch.Tensor) -> None:
        self.net = self.net.to(torch.bfloat16)
        self.input_dtype = torch.bfloat16
        try:
            with torch.no_grad(), warnings.catch_warnings():
                # TorchScript is deprecated in favour of torch.compile, but compiling takes
                # about a minute on two cores, and freezing (BatchNorm folded) is ~2x eager.
                warnings.simplefilter("ignore", FutureWarning)
                self._traced = torch.jit.freeze(torch.jit.trace(self.net, x.to(torch.bfloat16)))
        except Exception as err:  # some architectures do not trace; eager bf16 still works
            log.warning("TorchScript tracing failed (%s); running eagerly", err)
            self._jit = False

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Resized uint8 images ``[B, 3, S, S]`` to float32 features ``[B, D]``."""
        images = images.to(self.device, non_blocking=True)
        if self.text:
            return self.features(images)
        return self.features(self.preprocess.normalize(images, self.input_dtype))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised float input ``[B, 3, S, S]`` to float32 features ``[B, D]``."""
        x = channels_last(x.to(self.device, non_blocking=True))
        with torch.inference_mode():
            if self._jit and self._traced is None:
                self._trace(x)
            if self._traced is not None:
                return self._traced(x.to(self.input_dtype)).float()
            if x.is_floating_point():
                x = x.to(self.input_dtype)
            if self.amp is None or self.input_dtype == self.amp:
                return self.net(x).float()
            with torch.autocast(self.device.type, dtype=self.amp):
                return self.net(x).float()

    def warm_up(self, batch_size: int) -> None:
        """Trace (when jitting) and run one batch, so timings measure steady-state throughput."""
        self.features(self._dummy(batch_size))

    def _dummy(self, batch_size: int) -> torch.Tensor:
        """A batch of the model's input kind: blank images, or short all-real token rows."""
        if self.text:
            return torch.ones(batch_size, 2, 16, dtype=torch.int32, device=self.device)
        size = self.preprocess.size
        return torch.zeros(batch_size, 3, size, size, device=self.device)

    def widths(self) -> list[int]:
        """Width of each part of the feature vector: pre-logits, then each hooked layer."""
        return list(self._widths)

    @functools.cached_property
    def _widths(self) -> tuple[int, ...]:
        # Measured once in fp32, before warm_up may cast the network to bf16 for tracing.
        with torch.inference_mode():
            return tuple(self.net.widths(self._dummy(1)))

    @property
    def num_features(self) -> int:
        """Width of the whole feature vector."""
        return sum(self._widths)


def batches(
    images: torch.Tensor, start: int, stop: int, batch: int, fn: Preprocess, workers: int | None
) -> Iterator[torch.Tensor]:
    """Resized uint8 batches of rows ``start:stop``, prepared ahead while the model runs.

    ``workers=None`` picks a background thread on CPU (resize ops release the GIL, and on two
    cores extra processes cost more in copying than they save) and worker processes on CUDA.
    """
    if workers is None:
        workers = min(4, os.cpu_count() or 1) if torch.cuda.is_available() else 0
    rows = _Rows(images, start, stop, batch, fn)
    if workers == 0:
        yield from _prefetch_in_thread(rows)
        return
    loader = DataLoader(
        rows,
        batch_size=None,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=4,
    )
    yield from loader


def _prefetch_in_thread(rows: _Rows, depth: int = 2) -> Iterator[torch.Tensor]:
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = [pool.submit(rows.__getitem__, i) for i in range(min(depth, len(rows)))]
        for i in range(len(rows)):
            batch = pending.pop(0).result()
            if i + depth < len(rows):
                pending.append(pool.submit(rows.__getitem__, i + depth))
            yield batch
