"""Which BBC News test articles does every model get wrong? The ceiling behind ">= 0.99".

    .venv/bin/python bench/text_errors.py [--project examples/text]
        [--variants 256:head 512:head+tail]

On the prepared split (441 test articles, carved by content hash and seed), 0.99 allows 4 errors.
This bench fits models with different inductive biases on the same train split and lists, per test
article, who gets it wrong:

- TF-IDF (1-2 grams) + LinearSVC (bag of words; evaluate's classical baseline);
- thawline's head on cached MiniLM embeddings, for each ``max_length:truncation`` variant
  (each variant runs prepare, extract and train_head in a folder of its own under --work);
- scikit-learn's logistic regression on the same embeddings (the issue's own probe).

Articles that every model misses, and that a bag of words and a sentence encoder miss alike, are
the candidates for a label no model of this data can reach: the bench prints each one with its
label, every model's prediction and the nearest training article (TF-IDF cosine) with its label,
so a reader can judge the label. No model here sees the test split before it predicts.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import numpy as np

from thawline.config import load_config
from thawline.data.store import PreparedStore, load_split
from thawline.evaluation.tfidf import tfidf_svm
from thawline.features.cache import load_features
from thawline.models.storage import load_head
from thawline.stages import extract, prepare, train_head


def embedding_models(project: Path, work: Path, variant: str) -> dict[str, np.ndarray]:
    """Test predictions of thawline's head and a logistic regression on one variant's cache."""
    import torch
    from sklearn.linear_model import LogisticRegression

    max_length, truncation = variant.split(":")
    folder = work / variant.replace(":", "-").replace("+", "")
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(project / "params.yaml", folder / "params.yaml")
    here = Path.cwd()
    os.chdir(folder)  # the config's paths are relative to the project folder
    try:
        cfg = load_config(
            "params.yaml",
            [f"prepare.max_length={max_length}", f"prepare.truncation={truncation}"],
        )
        for stage in (prepare, extract, train_head):
            stage.run(cfg)
        x_train, y_train = load_features(Path(cfg.paths.features), "train")
        x_test, _ = load_features(Path(cfg.paths.features), "test")
        head, _ = load_head(Path(cfg.paths.head))
        with torch.inference_mode():
            head_pred = head.eval()(x_test.float()).argmax(1).numpy()
    finally:
        os.chdir(here)
    probe = LogisticRegression(max_iter=2000, C=10.0).fit(x_train.float().numpy(), y_train)
    return {
        f"head {variant}": head_pred,
        f"logreg {variant}": probe.predict(x_test.float().numpy()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, default=Path("examples/text"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/thawline-text-errors"))
    parser.add_argument("--variants", nargs="+", default=["256:head", "512:head+tail"])
    args = parser.parse_args()
    project = args.project.resolve()
    predictions: dict[str, np.ndarray] = {}
    for variant in args.variants:
        predictions.update(embedding_models(project, args.work.resolve(), variant))
    first = args.work.resolve() / args.variants[0].replace(":", "-").replace("+", "")
    cfg = load_config(first / "params.yaml")
    prepared = first / cfg.paths.prepared
    train, test = load_split(prepared, "train"), load_split(prepared, "test")
    y_train, y_test = train.labels.numpy(), test.labels.numpy()
    probs, _ = tfidf_svm(train.texts, y_train, test.texts, cfg.seed)
    predictions = {"tfidf+svm": probs.argmax(1), **predictions}
    classes = PreparedStore(prepared).classes
    n = len(y_test)
    print(f"test articles: {n}; 0.99 needs at most {n - int(np.ceil(0.99 * n))} wrong")
    wrong = {name: pred != y_test for name, pred in predictions.items()}
    for name, miss in wrong.items():
        print(f"  {name:24} accuracy {1 - miss.mean():.4f}  wrong {int(miss.sum())}")
    misses = np.stack(list(wrong.values()))
    every = np.flatnonzero(misses.all(0))
    some = np.flatnonzero(misses.any(0))
    print(f"wrong by every model: {len(every)}; by at least one: {len(some)}")
    print(f"best possible oracle (right if any model is): {1 - len(every) / n:.4f}")
    nearest = nearest_training(train.texts, test.texts)
    for index in some:
        who = [name for name, miss in wrong.items() if miss[index]]
        guesses = sorted({classes[int(predictions[name][index])] for name in who})
        j, similarity = nearest[index]
        tag = "EVERY MODEL" if index in every else f"{len(who)} of {len(wrong)}"
        print(f"\n[{tag}] test {test.keys[index]}  label {classes[int(y_test[index])]}  "
              f"predicted {'/'.join(guesses)}")  # fmt: skip
        print(f"  nearest train article {train.keys[j]} (cosine {similarity:.2f}): "
              f"label {classes[int(y_train[j])]}")  # fmt: skip
        print("  " + " ".join(test.texts[index].split())[:300])


def nearest_training(train_texts: list[str], test_texts: list[str]) -> list[tuple[int, float]]:
    """Index and TF-IDF cosine of each test article's most similar training article."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(sublinear_tf=True).fit(train_texts)
    similarity = (vectorizer.transform(test_texts) @ vectorizer.transform(train_texts).T).toarray()
    best = similarity.argmax(1)
    return [(int(j), float(similarity[i, j])) for i, j in enumerate(best)]


if __name__ == "__main__":
    main()
