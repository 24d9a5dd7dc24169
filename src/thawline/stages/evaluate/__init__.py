"""``evaluate``: score every trained model on a pinned split; report the chosen one in full.

The models are those of the stage table (``thawline.stage_table.MODELS``): the head on cached
features (``head_only``), the fine-tuned model (``finetuned``, when ``finetune`` trained one) and
the from-scratch baseline (``scratch``, when enabled). The one that ``register`` registers is
chosen by ``evaluate.model``; ``best`` takes the higher *validation* accuracy of the candidates
(the test split never chooses). A baseline is compared, never chosen. What is written, and
where, is :mod:`thawline.evaluation.artifacts`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from thawline.config import Config
from thawline.data.store import PreparedStore
from thawline.errors import EvaluationError, StoreError
from thawline.evaluation import artifacts
from thawline.evaluation.metrics import (
    Evaluation,
    accuracy,
    evaluate_predictions,
    wilson_interval,
)
from thawline.evaluation.temperature import scale
from thawline.models.storage import read_head_meta
from thawline.run_stats import read_stats
from thawline.stage_table import CANDIDATES, MODELS, StageResult, trained_by
from thawline.stages.evaluate.outputs import HEAD_ONLY, ModelOutput, calibrate, model_outputs
from thawline.stages.evaluate.pictures import write_pictures

log = logging.getLogger(__name__)


def run(cfg: Config, *, progress: bool = True) -> StageResult:
    """Evaluate the models on ``cfg.evaluate.split`` and write ``cfg.paths.evaluation``.

    Args:
        cfg: The config; reads ``paths``, ``evaluate``.
        progress: Accepted like every stage's; scoring takes seconds (the head reads cached
            features, image models run over one split), so there is nothing to show.

    Raises:
        StoreError: No prepared data, or no such split.
        CacheError: The feature cache is missing, corrupted or from other prepared data.
        EvaluationError: No trained head, or a head that does not fit the cache or classes.
    """
    split = cfg.evaluate.split
    store = PreparedStore(cfg.paths.prepared)
    if split not in store.splits:
        raise StoreError(f"{cfg.paths.prepared}: no split '{split}' (evaluate.split)")
    outputs, skipped = model_outputs(cfg, store)
    chosen, reason = choose_model(cfg.evaluate.model, outputs)
    log.info("evaluate: %s is the model (%s)", chosen, reason)
    info = {"split": split, "split_fingerprint": store.split_fingerprint(split),
            "model": chosen, "reason": reason, "skipped": skipped,
            "data": {"modality": store.modality, "image_size": store.image_size,
                     "items": {s: store.count(s) for s in store.splits}}}  # fmt: skip
    out = cfg.paths.evaluation
    artifacts.begin(out)
    scored = {name: _score(cfg, output, store.classes) for name, output in outputs.items()}
    fit, before = calibrate(cfg, store, chosen), scored[chosen]
    if fit.kept:  # what the registered model will output: softmax(logits / T)
        outputs[chosen] = replace(outputs[chosen], probs=scale(outputs[chosen].probs,
                                                               fit.temperature))  # fmt: skip
        scored[chosen] = _score(cfg, outputs[chosen], store.classes)
    scored[chosen].scalars |= {"temperature": fit.temperature} | {
        f"uncalibrated_{k}": before.scalars[k] for k in ("ece", "loss", "brier")}  # fmt: skip
    output, evaluation = outputs[chosen], scored[chosen]
    gallery = _split_images(store, split, output.labels) if cfg.evaluate.gallery_size else None
    artifacts.write_comparison(out, {
        name: (ev.scalars, _summary(info | {"model": name}, ev, outputs[name], store.classes)
               | {"chosen": name == chosen})
        for name, ev in scored.items()
    })  # fmt: skip
    artifacts.write_evaluation(
        out, evaluation, (output.labels, output.probs),
        _summary(info, evaluation, output, store.classes), output.history, gallery,
    )  # fmt: skip
    artifacts.write_calibration(out, fit.as_dict(), evaluation.calibration,
                                before.calibration if fit.kept else None)  # fmt: skip
    info |= write_pictures(cfg, store, outputs, chosen, evaluation)
    log.info("evaluated %s on %s: %s", chosen, split, _fmt(evaluation.scalars))
    metrics = dict(evaluation.scalars) | headline(scored, chosen, split)
    artifacts.write_metrics(out, metrics)  # last: marks a complete evaluation
    metrics |= _train_seconds(cfg, outputs)
    return StageResult(outputs={"evaluation": out}, metrics=metrics, info=info)


def headline(scored: dict[str, Evaluation], chosen: str, split: str) -> dict[str, float]:
    """What metrics.json adds to the chosen model's scalars: every model's accuracy (so
    ``dvc metrics diff`` compares strategies), the split's size and a Wilson 95% interval of
    the chosen model's accuracy."""
    figures = {f"{name}_accuracy": ev.scalars["accuracy"] for name, ev in scored.items()}
    figures |= {f"{name}_tta_accuracy": ev.scalars["tta_accuracy"]
                for name, ev in scored.items() if "tta_accuracy" in ev.scalars}  # fmt: skip
    examples = len(scored[chosen].pred)
    low, high = wilson_interval(int(np.trace(scored[chosen].confusion)), examples)
    if high - low > 0.1:
        log.warning(
            "evaluate: only %d %s examples, so accuracy is known to within %.3f-%.3f (Wilson "
            "95%%); compare models on a larger %s split before trusting small differences",
            examples, split, low, high, split,
        )  # fmt: skip
    return figures | {"examples": float(examples), "accuracy_ci_low": low,
                      "accuracy_ci_high": high}  # fmt: skip


def choose_model(wanted: str, outputs: dict[str, ModelOutput]) -> tuple[str, str]:
    """``(model, reason)``: ``wanted``, or for ``best`` the candidate with the best val accuracy.

    Raises:
        EvaluationError: ``wanted`` names a model that was not trained.
    """
    if wanted != "best":
        if wanted not in outputs:
            raise EvaluationError(
                f"evaluate.model: '{wanted}', but no such model was trained; run "
                f"'thawline stage {trained_by(wanted).name}' or use evaluate.model: best"
            )
        return wanted, "set in params (evaluate.model)"
    scored = {n: o.val_accuracy for n, o in outputs.items() if n in CANDIDATES}
    if len(scored) == 1:
        return HEAD_ONLY, "the only model trained (no fine-tuned model)"
    last = CANDIDATES[-1]  # the fine-tuned model: trained last, it wins ties
    if any(v is None for v in scored.values()):
        return last, "no validation accuracy to compare: the fine-tuned model, trained last"
    best = max(scored, key=lambda n: (scored[n], n == last))
    table = ", ".join(f"{n} {v:.4f}" for n, v in scored.items())
    return best, f"best validation accuracy ({table})"


def _score(cfg: Config, output: ModelOutput, classes: list[str]) -> Evaluation:
    evaluation = evaluate_predictions(
        output.probs, output.labels, classes, bins=cfg.evaluate.calibration_bins,
        confused_top=cfg.evaluate.confused_top, gallery_size=cfg.evaluate.gallery_size,
    )  # fmt: skip
    if output.tta_probs is not None:  # beside the plain score, never instead of it
        pred = output.tta_probs.argmax(axis=1)
        evaluation.scalars["tta_accuracy"] = accuracy(output.labels, pred)
    return evaluation


def _train_seconds(cfg: Config, outputs: dict[str, ModelOutput]) -> dict[str, float]:
    """Each model's training wall time (its stage's last run; the TF-IDF baseline's when it was
    fitted), for MLflow only: not a metric of the model, so not in metrics.json."""
    figures = {}
    for name, output in outputs.items():
        seconds = output.details.get("train_seconds")
        if name in MODELS:
            seconds = read_stats(cfg.paths.stats, trained_by(name).name).get("seconds")
        if seconds is None and name == HEAD_ONLY:  # heads saved before run statistics moved
            seconds = read_head_seconds(cfg.paths.head)
        if seconds is not None:
            figures[f"{name}_train_seconds"] = float(seconds)
    return figures


def read_head_seconds(folder: Path) -> float | None:
    """A head's training seconds as heads saved by hand or by older versions record them."""
    return read_head_meta(folder).get("seconds")


def _split_images(store: PreparedStore, split: str, labels: np.ndarray):
    """The evaluated split's images (texts, for text), checked to be in the same row order as
    ``labels``."""
    data = store.load(split)
    if not np.array_equal(data.labels.numpy(), labels):
        raise StoreError(
            f"{store.folder}: the cached labels of '{split}' differ from the prepared store's; "
            "rerun 'thawline stage extract'"
        )
    return data.texts if data.texts is not None else data.images.numpy()


def _summary(info: dict, ev: Evaluation, output: ModelOutput, classes: list[str]) -> dict:
    return {
        **info,
        "strategy": output.model,
        "num_examples": len(output.labels),
        "classes": classes,
        "metrics": ev.scalars,
        "val_accuracy": output.val_accuracy,
        "details": output.details,
    }


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
