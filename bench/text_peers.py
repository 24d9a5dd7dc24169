"""Text classification peers side by side: the same BBC News split, the same CPU, one run.

    .venv/bin/python bench/text_peers.py [--project examples/text] [--setfit-minutes 15]

Reports test accuracy (with its Wilson 95% interval) and wall time for:

- TF-IDF (1-2 grams) + LinearSVC (scikit-learn), fitted here on the train split;
- SetFit 1.2 (sentence-transformers) with the packaged all-MiniLM-L6-v2 as its body and its
  default TrainingArguments (contrastive body tuning, then a logistic-regression head), fitted
  here. Its default oversampling draws every positive pair of 1,613 articles, days of CPU; so
  ``max_steps`` caps body tuning at ``--setfit-minutes`` of measured steps (the fine-tune's budget);
- thawline's head on the cached embeddings and thawline fine-tuned: from the project's latest
  ``dvc repro`` (``make run-text``) on this machine, read from its metrics.json and run
  statistics; the split is that run's prepared store, so every row scores the same 441 articles.

SetFit is a bench-only extra (``pip install setfit==1.2.0``), never a runtime dependency.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from thawline.config import load_config
from thawline.data.store import load_split
from thawline.evaluation.metrics import wilson_interval
from thawline.evaluation.tfidf import tfidf_svm
from thawline.models.text_weights import packaged_minilm


def setfit_run(train, test, minutes: float, seed: int) -> tuple[float, float]:
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    started = time.perf_counter()
    model = SetFitModel.from_pretrained(str(packaged_minilm()))
    data = Dataset.from_dict({"text": train.texts, "label": train.labels.tolist()})
    out = tempfile.mkdtemp(prefix="setfit-")  # its checkpoints, never in the working tree
    probe = Trainer(model=model, args=TrainingArguments(output_dir=out, max_steps=5, seed=seed),
                    train_dataset=data)  # fmt: skip
    t0 = time.perf_counter()
    probe.train()  # measures this CPU's seconds per step (the trainer's own clock: no set-up)
    logged = [
        h["train_runtime"] for h in probe.st_trainer.state.log_history if "train_runtime" in h
    ]
    per_step = float(logged[-1] if logged else time.perf_counter() - t0) / 5
    steps = max(5, int(minutes * 60 / per_step))
    model = SetFitModel.from_pretrained(str(packaged_minilm()))
    args = TrainingArguments(output_dir=out, max_steps=steps, seed=seed)
    Trainer(model=model, args=args, train_dataset=data).train()
    pred = np.asarray(model.predict(test.texts))
    seconds = time.perf_counter() - started
    print(f"  setfit: {steps} body steps ({per_step:.2f} s/step measured)")
    return float((pred == test.labels.numpy()).mean()), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, default=Path("examples/text"))
    parser.add_argument("--setfit-minutes", type=float, default=15.0)
    args = parser.parse_args()
    cfg = load_config(args.project / "params.yaml")
    prepared = args.project / cfg.paths.prepared
    train, test = load_split(prepared, "train"), load_split(prepared, "test")
    n = len(test.labels)
    rows = []
    started = time.perf_counter()
    probs, _ = tfidf_svm(train.texts, train.labels.numpy(), test.texts, cfg.seed)
    acc = float((probs.argmax(1) == test.labels.numpy()).mean())
    rows.append(("TF-IDF + LinearSVC", acc, time.perf_counter() - started))
    acc, seconds = setfit_run(train, test, args.setfit_minutes, cfg.seed)
    rows.append(("SetFit 1.2 (MiniLM body)", acc, seconds))
    metrics = json.loads((args.project / cfg.paths.evaluation / "metrics.json").read_text())
    stats = args.project / cfg.paths.stats
    seconds = {name: json.loads((stats / f"{name}.json").read_text())["seconds"]
               for name in ("extract", "train_head", "finetune")}  # fmt: skip
    rows.append(("thawline head on cache (train_head)", metrics["head_only_accuracy"],
                 seconds["train_head"]))  # fmt: skip
    rows.append(("thawline head incl. extraction", metrics["head_only_accuracy"],
                 seconds["extract"] + seconds["train_head"]))  # fmt: skip
    rows.append(("thawline fine-tuned", metrics["finetuned_accuracy"], seconds["finetune"]))
    print(f"BBC News test split: {n} articles (prepared store {prepared})")
    print(f"{'model':38} {'accuracy':>8}  {'Wilson 95%':>13}  {'seconds':>8}")
    for name, acc, sec in rows:
        low, high = wilson_interval(round(acc * n), n)
        print(f"{name:38} {acc:8.4f}  {low:.3f}-{high:.3f}  {sec:8.1f}")


if __name__ == "__main__":
    main()
