"""The registered text model's input: a ``text`` column of strings, tokenised as ``prepare`` did.

Bounded by design: at most ``MAX_DOCUMENTS`` per request and ``prepare.max_length`` tokens per
document (longer ones are truncated as in training), so no request can hold the server for long.
An empty or non-string value is refused with HTTP 400 naming its row.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from thawline.models.classifier import Classifier
from thawline.models.text_input import stack_tokens, tokenize
from thawline.tracking.pyfunc import prediction_table
from thawline.tracking.refusals import invalid

MAX_DOCUMENTS = 1000  # per request; about a minute on a 2-core CPU at 256 tokens
BATCH = 32
TEXT_FORMATS = (
    'accepted: {"dataframe_split": {"columns": ["text"], "data": [["..."]]}}, '
    '{"dataframe_records": [{"text": "..."}]}, {"inputs": {"text": ["...", "..."]}} '
    'or {"instances": [{"text": "..."}]}'
)


def text_column(model_input: Any) -> list[Any]:
    """The ``text`` values of a DataFrame (or a plain list / dict of lists)."""
    if isinstance(model_input, pd.DataFrame):
        if "text" not in model_input.columns:
            names = [str(c)[:40] for c in model_input.columns][:5]
            raise invalid(f"expected a column 'text', got columns {names}; {TEXT_FORMATS}")
        values: list[Any] = []
        for value in model_input["text"]:  # {"inputs": {"text": [a, b]}} arrives as one cell
            many = isinstance(value, (list, tuple, np.ndarray))
            values += list(value) if many else [value]
        return values
    if isinstance(model_input, dict) and "text" in model_input:
        values = model_input["text"]
        return [values] if isinstance(values, str) else list(values)
    if isinstance(model_input, (list, tuple)):
        return list(model_input)
    if isinstance(model_input, str):
        return [model_input]
    raise invalid(f"expected a 'text' column, got {type(model_input).__name__}; {TEXT_FORMATS}")


def classify_texts(model: Classifier, values: list[Any]) -> pd.DataFrame:
    """Check, tokenise and classify documents, in batches of similar length."""
    if len(values) > MAX_DOCUMENTS:
        raise invalid(f"{len(values)} documents in one request; at most {MAX_DOCUMENTS}")
    for row, value in enumerate(values):
        if not isinstance(value, str):
            raise invalid(f"text {row}: expected a string, got {type(value).__name__}")
        if not value.strip():
            raise invalid(f"text {row}: empty or whitespace only")
    spec = model.preprocess
    ids, mask, _ = tokenize(model.tokenizer, [" ".join(v.split()) for v in values],
                            spec.max_length, spec.truncation)  # fmt: skip
    inputs = stack_tokens(ids, mask)
    order = torch.argsort(inputs[:, 1].sum(1), stable=True)
    probs = torch.zeros((len(values), len(model.classes)))
    with torch.inference_mode():
        for start in range(0, len(values), BATCH):
            rows = order[start : start + BATCH]
            probs[rows] = torch.softmax(model(inputs[rows]).float(), dim=1)
    return prediction_table(model.classes, probs.numpy())
