"""The classical text baseline: TF-IDF + a linear SVM (scikit-learn), on the same split.

On BBC News it is the number to beat (0.989 test accuracy, docs/benchmarks.md). The SVM's
margins become probabilities through scikit-learn's sigmoid calibration (3-fold), so its log-loss
and calibration are comparable with the neural models'. Trained on the train split only, as the
head is; seconds, not minutes.
"""

from __future__ import annotations

import time

import numpy as np

BASELINE = "tfidf_svm"


def tfidf_svm(train_texts: list[str], train_labels: np.ndarray, texts: list[str], seed: int):
    """``(probabilities [N, C] float64, seconds)`` of TF-IDF + LinearSVC fitted on the train
    split, for ``texts``. Classes absent from train get probability 0."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import LinearSVC

    started = time.perf_counter()
    counts = np.bincount(train_labels)
    folds = int(min(3, counts[counts > 0].min()))
    svm = LinearSVC(random_state=seed)
    classifier = CalibratedClassifierCV(svm, cv=folds) if folds >= 2 else svm
    min_df = 2 if len(train_texts) > 100 else 1  # a word seen once says little in a big corpus
    vectorizer = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=min_df)
    model = make_pipeline(vectorizer, classifier)
    model.fit(train_texts, train_labels)
    seconds = time.perf_counter() - started
    n_classes = int(max(train_labels.max(), 0) + 1)
    probs = np.zeros((len(texts), n_classes))
    if hasattr(model, "predict_proba"):
        probs[:, model.classes_] = model.predict_proba(texts)
    else:  # too few examples to calibrate: the prediction, with certainty
        probs[np.arange(len(texts)), model.predict(texts)] = 1.0
    return probs, seconds
