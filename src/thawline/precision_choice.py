"""``precision: auto`` for training and for trained models, on a CPU or a GPU: measured on the
machine at hand, not a threshold measured on another.

Whether half precision pays depends on the processor, the network and the input size. Lite0
training at batch 64 and 64 px in bf16 autocast ran at 0.6x fp32 on an AMD EPYC and 0.46x on an
Intel Xeon with AMX; at 128 px it was 1.3x on the AMD EPYC. On an NVIDIA H200 it ran at 0.56x
fp32 (cuDNN's bf16 channels-last convolutions: about 56 kernel launches per call). So on a
CPU with native bf16, and on CUDA, ``auto`` times a few steps of fp32 and of half-precision
autocast (bf16, or fp16 on a GPU without bf16) on a copy of the model (random inputs, the real
batch and input size; forward and backward when training) and keeps the faster. The answer is
cached per processor model, torch version, network, input shape, use and thread count in
``$THAWLINE_CACHE/precision.json`` (default ``~/.cache/thawline``), so each kind of machine
measures once (seconds), and every run records what was chosen and by which figures.

Only images are measured: text models keep the rule of
:func:`thawline.devices.resolve_precision` (bf16 where native, fp16 with a GradScaler on a GPU
without bf16).
"""

from __future__ import annotations

import copy
import json
import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from thawline.devices import Precision, autocast, native_cpu_bf16, resolve_precision
from thawline.distributed import World
from thawline.files import user_cache_folder, write_json

if TYPE_CHECKING:
    from thawline.models.classifier import Classifier

log = logging.getLogger(__name__)

# Enough to get past oneDNN's first-call setup and average out a noisy shared machine, little
# enough that a first run on a new machine spends seconds on it.
WARMUP_STEPS, TIMED_STEPS = 2, 3


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision and why: ``asked`` (explicit), ``rule`` (text, a CPU without native bf16),
    ``measured`` (now) or ``cached`` (an earlier measurement on this kind of processor)."""

    precision: Precision
    how: str
    images_per_s: dict[str, float] = field(default_factory=dict)
    processor: str = ""  # the CPU's or the GPU's model name
    gpu: bool = False

    def record(self) -> dict:
        """What a run records: the precision, how it was chosen, the figures behind it."""
        out: dict = {"precision": self.precision.name, "chosen_by": self.how}
        if self.images_per_s:
            out |= {"gpu" if self.gpu else "cpu": self.processor, "images_per_s": self.images_per_s}
        return out


def choose_precision(
    requested: str,
    device: torch.device,
    model: Classifier,
    *,
    batch: int,
    training: bool,
    key: str = "finetune.precision",
) -> PrecisionChoice:
    """The precision for ``model`` at ``batch`` (``requested``: auto | fp32 | bf16 | fp16).

    Raises:
        ConfigError: fp16 training on a CPU.
    """
    rule = resolve_precision(requested, device, training=training, key=key)
    if requested != "auto":
        return PrecisionChoice(rule, "asked")
    size = model.preprocess.size
    cuda = device.type == "cuda"
    if model.modality != "image" or not size or not (cuda or native_cpu_bf16()):
        return PrecisionChoice(rule, "rule")
    candidates = ("fp32", rule.name)  # auto's half precision here: bf16, or fp16 on an old GPU
    processor = torch.cuda.get_device_name(device) if cuda else cpu_model()
    entry = "|".join([
        processor, f"torch {torch.__version__}", model.spec.get("backbone", type(model).__name__),
        f"{sum(p.numel() for p in model.parameters())} parameters",
        "train" if training else "infer", f"{batch}x3x{size}x{size} channels_last",
        f"{torch.get_num_threads()} threads",  # a 1-thread answer is not a 2-thread one
    ])  # fmt: skip
    cached = _read_cache().get(entry)
    if cached and set(cached) == set(candidates):
        fastest = _fastest(cached, device, training)
        return PrecisionChoice(fastest, "cached", cached, processor, cuda)
    started = time.perf_counter()
    speeds = {name: _images_per_s(model, name, device, batch, size, training)
              for name in candidates}  # fmt: skip
    fastest = _fastest(speeds, device, training)
    choice = PrecisionChoice(fastest, "measured", speeds, processor, cuda)
    log.info(
        "precision auto: %s on this machine (%s), measured in %.1f s: %s img/s (%s, batch %d, "
        "%d px; cached in %s)", choice.precision.name, processor, time.perf_counter() - started,
        ", ".join(f"{k} {v:.0f}" for k, v in speeds.items()),
        "training" if training else "inference", batch, size, cache_file(),
    )  # fmt: skip
    _write_cache(entry, speeds)
    return choice


def agreed_precision(
    requested: str, device: torch.device, model: Classifier, batch: int, world: World
) -> PrecisionChoice:
    """:func:`choose_precision` for training; under torchrun every rank takes rank 0's answer
    (a measurement per rank could differ, and the ranks must train alike)."""
    choice = choose_precision(requested, device, model, batch=batch, training=True)
    if world.size == 1:
        return choice
    names = ["fp32", "bf16", "fp16"]
    mine = names.index(choice.precision.name) if world.main else 0
    agreed = names[int(world.all_sum(torch.tensor(float(mine), device=device)).item())]
    if agreed == choice.precision.name:
        return choice
    return PrecisionChoice(resolve_precision(agreed, device, training=True), "rank 0")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cache_file() -> Path:
    return user_cache_folder() / "precision.json"


def _fastest(speeds: dict[str, float], device: torch.device, training: bool) -> Precision:
    name = max(speeds, key=lambda n: (speeds[n], n == "fp32"))  # ties: fp32
    return resolve_precision(name, device, training=training)


def _images_per_s(
    model: Classifier, name: str, device: torch.device, batch: int, size: int, training: bool
) -> float:
    """Images/s of ``WARMUP_STEPS`` + ``TIMED_STEPS`` steps of a copy of ``model`` in ``name``
    precision on ``device``; the caller's random state (CPU and GPU) and model are left as they
    were."""
    precision = resolve_precision(name, device, training=False)
    cuda = device.type == "cuda"
    gpu = device.index if device.index is not None else (torch.cuda.current_device() if cuda else 0)
    with torch.random.fork_rng(devices=[gpu] if cuda else []):
        torch.manual_seed(0)
        # As the trainer and the evaluation run it: channels_last weights and inputs.
        net = copy.deepcopy(model).to(device, memory_format=torch.channels_last).train(training)
        for p in net.parameters():
            p.requires_grad_(training)
        x = torch.randn(batch, 3, size, size).to(device, memory_format=torch.channels_last)
        elapsed = 0.0
        for step in range(WARMUP_STEPS + TIMED_STEPS):
            if cuda:  # a GPU runs ahead of Python: time whole steps
                torch.cuda.synchronize(device)
            started = time.perf_counter()
            with torch.inference_mode(not training), autocast(x.device, precision):
                out = net.network(x).float()
            if training:
                out.logsumexp(dim=1).mean().backward()
                net.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize(device)
            if step >= WARMUP_STEPS:
                elapsed += time.perf_counter() - started
    return round(TIMED_STEPS * batch / elapsed, 1)


def _read_cache() -> dict:
    try:
        data = json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(entry: str, speeds: dict[str, float]) -> None:
    """Best effort: a read-only home only means measuring again next time."""
    try:
        path = cache_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, _read_cache() | {entry: speeds})
    except OSError as error:
        log.debug("precision cache not written: %s", error)
