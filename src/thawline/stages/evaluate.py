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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from thawline.config import Config
from thawline.data.store import PreparedStore
from thawline.devices import resolve_device, resolve_precision
from thawline.errors import EvaluationError, StoreError
from thawline.evaluation import artifacts
from thawline.evaluation.metrics import Evaluation, evaluate_predictions, wilson_interval
from thawline.evaluation.tfidf import BASELINE, tfidf_svm
from thawline.features.assemble import check_head
from thawline.features.cache import FeatureCache
from thawline.files import sha256_file
from thawline.models.storage import head_files, load_head, read_head_meta
from thawline.run_stats import read_stats
from thawline.stage_table import CANDIDATES, MODELS, StageResult, trained_by
from thawline.training.records import read_record
from thawline.training.strategy import probe_accuracy
from thawline.training.trained_model import load_trained
from thawline.training.validate import predict_logits

log = logging.getLogger(__name__)
HEAD_ONLY = MODELS[0]  # the probe: the head on cached features


@dataclass
class ModelOutput:
    """What a model predicted on the evaluated split, in the split's row order."""

    probs: np.ndarray  # [N, C]; float64 keeps tiny probabilities for the log-loss
    labels: np.ndarray  # int64 [N]
    model: str  # head_only | finetuned | scratch
    history: list[dict] = field(default_factory=list)  # per-epoch training metrics
    val_accuracy: float | None = None  # best validation accuracy in training: what chooses
    details: dict[str, str] = field(default_factory=dict)  # provenance, kept in summary.json


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
            "model": chosen, "reason": reason, "skipped": skipped}  # fmt: skip
    out = cfg.paths.evaluation
    artifacts.begin(out)
    scored = {name: _score(cfg, output, store.classes) for name, output in outputs.items()}
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


def model_outputs(
    cfg: Config, store: PreparedStore
) -> tuple[dict[str, ModelOutput], dict[str, str]]:
    """Every trained model's predictions on the evaluated split, and the models left out (why).

    The head on cached features always counts (it must exist). A model trained on images counts
    when its stage trained one from the current data (and, fine-tuned, the current head); an
    out-of-date one is left out with a warning, unless ``evaluate.model`` asks for it.
    """
    outputs = {HEAD_ONLY: head_on_cached_features(cfg, store)}
    if store.modality == "text":
        outputs[BASELINE] = classical_baseline(cfg, store)
    skipped = {}
    for name in MODELS[1:]:
        entry = trained_by(name)
        folder = getattr(cfg.paths, entry.output)
        record = read_record(folder)
        if record is None and (folder / "model").exists():
            problem = f"no record.json: the last '{entry.name}' did not finish"
            log.warning("evaluate: leaving out %s (%s): %s", name, folder, problem)
            skipped[name] = problem
        if record is None or not record.get("trained"):
            continue
        problem = _stale(cfg, store, name, record)
        if problem is None:
            outputs[name] = trained_on_images(cfg, store, name, folder, record)
        elif cfg.evaluate.model == name:
            raise EvaluationError(f"{folder}: {problem}; rerun 'thawline stage {entry.name}'")
        else:
            log.warning("evaluate: leaving out %s (%s): %s", name, folder, problem)
            skipped[name] = problem
    return outputs, skipped


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


def _stale(cfg: Config, store: PreparedStore, name: str, record: dict) -> str | None:
    if record.get("prepared_fingerprint") != store.fingerprint:
        return f"trained on other prepared data than {cfg.paths.prepared} holds"
    head = head_files(cfg.paths.head).weights
    if "head_sha256" in record and record["head_sha256"] != sha256_file(head):
        return f"fine-tuned from another head than {cfg.paths.head} holds"
    return None


def classical_baseline(cfg: Config, store: PreparedStore) -> ModelOutput:
    """TF-IDF + linear SVM on the prepared texts: compared, never chosen or registered."""
    train, data = store.load("train"), store.load(cfg.evaluate.split)
    probs, seconds = tfidf_svm(train.texts, train.labels.numpy(), data.texts, cfg.seed)
    return ModelOutput(
        probs=probs, labels=data.labels.numpy().astype(np.int64), model=BASELINE,
        details={"model": "scikit-learn TfidfVectorizer(1-2 grams) + LinearSVC, calibrated",
                 "weights_sha256": "", "train_seconds": f"{seconds:.2f}"},
    )  # fmt: skip


def trained_on_images(
    cfg: Config, store: PreparedStore, name: str, folder: Path, record: dict
) -> ModelOutput:
    """Run a model trained on the prepared items (fine-tuned or scratch) over the evaluated
    split."""
    model = load_trained(folder, record)
    device = resolve_device("auto")
    precision = resolve_precision("auto", device, model.preprocess.size)
    data = store.load(cfg.evaluate.split)
    logits = predict_logits(model.to(device), data.inputs, precision=precision)
    return ModelOutput(
        probs=torch.softmax(logits.double(), dim=1).numpy(),  # float64: see head_on_cached...
        labels=data.labels.numpy().astype(np.int64),
        model=name,
        history=list(record.get("history") or []),
        val_accuracy=(record.get("best") or {}).get("val_accuracy"),
        details={
            "folder": str(folder),
            "strategy": record.get("strategy", name),
            "reason": record.get("reason", ""),
            "image_size": str(model.preprocess.size),
            "weights_sha256": record["model_sha256"],
        },
    )


def head_on_cached_features(cfg: Config, store: PreparedStore) -> ModelOutput:
    """Apply the trained head to the cached features of the evaluated split (no backbone)."""
    folder = cfg.paths.head
    for path in head_files(folder):
        if not path.is_file():
            raise EvaluationError(
                f"{path}: no trained head here; run 'thawline stage train_head' first"
            )
    head, meta = load_head(folder)
    cache = FeatureCache(cfg.paths.features)
    check_head(folder, head.spec(), meta, cache, store)
    features, labels = cache.load(cfg.evaluate.split)
    with torch.inference_mode():
        logits = torch.cat([head(chunk) for chunk in features.split(8192)])
    # float64: a confident head's float32 softmax rounds small true-class probabilities to 0,
    # which would turn the log-loss into a clipped guess.
    probs = torch.softmax(logits.double(), dim=1)
    return ModelOutput(
        probs=probs.numpy(),
        labels=labels.numpy().astype(np.int64),
        model=HEAD_ONLY,
        history=list(meta.get("history") or []),
        val_accuracy=probe_accuracy(meta),
        details={
            "head": str(folder),
            "features_fingerprint": cache.fingerprint,
            "weights_sha256": sha256_file(head_files(folder).weights),
        },
    )


def _score(cfg: Config, output: ModelOutput, classes: list[str]) -> Evaluation:
    return evaluate_predictions(
        output.probs, output.labels, classes, bins=cfg.evaluate.calibration_bins,
        confused_top=cfg.evaluate.confused_top, gallery_size=cfg.evaluate.gallery_size,
    )  # fmt: skip


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
