"""What a fine-tune starts from: the probe's head, made right for the features it will see.

``train_head`` fits the probe on features cached at ``extract.image_size``. A fine-tune at another
input size (``finetune.image_size``: 64 px against 128 px by default) feeds the head other
features, and the probe's head and standardisation do not fit them: on a 1,300-image folder the
same head fell from 0.913 to 0.527 validation accuracy, with logits 11x larger, and its gradients
tore into the thawing groups. So the head is fit again, with the probe's own settings, on the
features of the training images at the fine-tune's size, computed by the model itself exactly as
validation computes them (eval mode, the fine-tune's precision). At most ``REFIT_ROWS`` training
images (a seeded sample) are used: a linear probe on a thousand-odd features is as good on 10,000
images as on 54,000 (the fine-tune trains the head further anyway), and on the default data the
refit then costs about 25 s instead of 110 s. The whole val split is scored, as epoch 0 is.

The fine-tune then checks its start out loud (:class:`StartChecks`): epoch 0, the starting
model's validation before any step, must match the head it starts from within half a point, and
neither epoch 0 nor the first head-only epoch may be worse than a uniform guess.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from thawline.config import HeadParams as HeadParams
from thawline.devices import Precision
from thawline.models.classifier import Classifier
from thawline.training.fit_head import EpochCallback, fit_head
from thawline.training.validate import pooled_features

log = logging.getLogger(__name__)
Data = tuple[torch.Tensor, torch.Tensor]  # uint8 images [N, 3, S, S], int64 labels [N]
MATCH = 0.005  # epoch 0 within half a point of the head's own validation accuracy
REFIT_ROWS = 10_000


@dataclass
class Start:
    """The model to fine-tune and what its epoch 0 should reach."""

    model: Classifier
    expected: float | None  # the starting head's validation accuracy (None: no val split)
    source: str  # what ``expected`` is, in words
    info: dict[str, Any] = field(default_factory=dict)  # for the stage's record
    seconds: float = 0.0  # spent getting here (the head's refit): a run statistic


def at_size(model: Classifier, size: int | None) -> Classifier:
    """``model`` with inputs resized to ``size`` (the fine-tune's), or as it is for None."""
    if size is None or size == model.preprocess.size:
        return model
    model.preprocess = dataclasses.replace(model.preprocess, size=size)
    model.spec = {**model.spec, "preprocess": model.preprocess.spec()}
    return model


def refit_head(
    model: Classifier,
    train: Data,
    val: Data | None,
    opts: HeadParams,
    seed: int,
    precision: Precision,
    *,
    progress: bool = False,
) -> tuple[dict[str, Any], float]:
    """Fit ``model``'s head again on its own features at its input size (in place).

    Returns:
        What was done, for the record (size, images, validation accuracy, best epoch), and the
        seconds it took.
    """
    started = time.perf_counter()
    if len(train[1]) > REFIT_ROWS:
        rows = torch.randperm(len(train[1]), generator=torch.Generator().manual_seed(seed))
        rows = rows[:REFIT_ROWS].sort().values
        train = (train[0][rows], train[1][rows])
    features = {
        name: (pooled_features(model, data[0], precision=precision, progress=progress), data[1])
        for name, data in (("train", train), ("val", val))
        if data is not None
    }
    fit = fit_head(
        features["train"], features.get("val"), model.head.config["num_classes"], opts, seed
    )
    model.head = fit.head
    return {
        "image_size": model.preprocess.size,
        "train_images": len(train[1]),
        "val_accuracy": fit.best.get("val_accuracy"),
        "best_epoch": fit.best_epoch,
    }, time.perf_counter() - started


class StartChecks:
    """Wraps ``on_epoch_end``: checks epoch 0 and the first head-only epoch, loudly.

    ``findings`` collects every warning, for the stage's record.
    """

    def __init__(self, start: Start, val_count: int, num_classes: int, inner: EpochCallback | None):
        self.start, self.val_count, self.inner = start, val_count, inner
        self.uniform = math.log(num_classes)  # the loss of a uniform guess, smoothed or not
        self.chance = 1 / num_classes
        self.findings: list[str] = []
        self._head_only_seen = False

    def __call__(self, epoch: int, metrics: dict[str, float]) -> None:
        if epoch == 0:
            self._epoch_zero(metrics)
        elif metrics.get("unfrozen_groups") == 0 and not self._head_only_seen:
            self._head_only_seen = True
            if metrics["train_loss"] >= self.uniform:
                self._warn(
                    f"the head-only phase's first epoch has train loss {metrics['train_loss']:.3f},"
                    f" no better than a uniform guess ({self.uniform:.3f}): the head does not fit "
                    "the features it is trained on; lower finetune.base_lr"
                )
        if self.inner is not None:
            self.inner(epoch, metrics)

    def _epoch_zero(self, metrics: dict[str, float]) -> None:
        accuracy, expected = metrics["val_accuracy"], self.start.expected
        # A high loss with accuracy well above chance is an overconfident head (a probe picked by
        # accuracy on a few dozen images), not one that misreads the features.
        if metrics["val_loss"] >= self.uniform and accuracy < 2 * self.chance:
            self._warn(
                f"the starting model's validation loss {metrics['val_loss']:.3f} is no better "
                f"than a uniform guess ({self.uniform:.3f}) and its accuracy {accuracy:.3f} is "
                "near chance: the head does not fit the backbone's features; rerun extract and "
                "train_head"
            )
        if expected is None or abs(accuracy - expected) <= MATCH:
            log.info("finetune: epoch 0 (no step yet): val accuracy %.4f", accuracy)
            return
        images = round(abs(accuracy - expected) * self.val_count)
        self._warn(
            f"epoch 0 (no step yet) validates at {accuracy:.4f}, {100 * (accuracy - expected):+.2f}"
            f" points ({images} of {self.val_count} images) from {self.start.source} "
            f"({expected:.4f}); {self.start.info.get('why_gap', '')}".rstrip("; ")
        )

    def _warn(self, message: str) -> None:
        self.findings.append(message)
        log.warning("finetune: %s", message)
