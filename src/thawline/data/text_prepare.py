"""``prepare`` for text: documents decoded under the policy, then tokenised once into the store.

The store gets, per split, ``input_ids`` (int16 when the vocabulary fits) and ``attention_mask``
(uint8) at ``prepare.max_length``, plus the normalised text itself (for the TF-IDF baseline and
the report). The tokenizer's identity (a hash of its files), ``max_length`` and the truncation
strategy enter the store's fingerprint, so another tokenizer or length means new features.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from thawline.config import Config
from thawline.errors import BadDocumentError
from thawline.progress import progress_bar

log = logging.getLogger(__name__)


def load_documents(source, chosen: list[int], cfg: Config, progress: bool):
    """Decode the chosen documents and tokenise them.

    Returns:
        ``(tensors, texts, hashes, loaded, skipped, info)``: the tokens and normalised texts of
        the documents that loaded (in ``loaded`` order), their content hashes, their source
        indices, the refused files and what the manifest records (tokenizer, truncation and
        decoding counts).

    Raises:
        BadDocumentError: A bad document under ``prepare.decoding: strict``.
    """
    opts = cfg.prepare
    strict = opts.decoding == "strict"
    skipped = list(source.problems)
    if skipped and strict:
        raise BadDocumentError(f"{skipped[0]} (set prepare.decoding: skip to exclude such rows)")
    texts, hashes, loaded, replaced = [], [], [], []
    bar = progress_bar(chosen, desc="prepare", unit="doc", disable=not progress, mininterval=1)
    for index in bar:
        try:
            digest, (text, bad_bytes) = source.load(index)
        except BadDocumentError as err:
            if strict:
                raise BadDocumentError(f"{err} (set prepare.decoding: skip or replace to "
                                       "exclude such documents)") from None  # fmt: skip
            skipped.append(str(err))
            continue
        texts.append(text)
        hashes.append(digest)
        loaded.append(index)
        if bad_bytes:
            replaced.append(source.items[index].key)
    tokenizer, identity = load_tokenizer(cfg)
    ids, mask, truncated = _tokenize(tokenizer, texts, opts.max_length, opts.truncation, progress)
    info: dict[str, Any] = {
        "modality": "text",
        "tokens": {
            **identity,
            "max_length": opts.max_length,
            "truncation": opts.truncation,
            "pad_id": int(tokenizer.pad_token_id or 0),
        },
        "truncated": int(truncated.sum()),
        "decoding": {"policy": opts.decoding, "replaced": len(replaced), "files": replaced[:200]},
    }
    _log_summary(len(texts), info, opts.max_length)
    tensors = {"input_ids": ids, "attention_mask": mask}
    return tensors, texts, hashes, loaded, skipped, info


def load_tokenizer(cfg: Config):
    """The backbone's tokenizer and its identity (name and the sha256 of its files)."""
    from transformers import AutoTokenizer

    from thawline.models.text_weights import quiet_transformers, resolve_folder, tokenizer_sha256

    quiet_transformers()
    name = cfg.backbone.name.removeprefix("hf:")
    folder = resolve_folder(name, cfg.backbone.weights)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return tokenizer, {"tokenizer": name, "tokenizer_sha256": tokenizer_sha256(folder)}


def _tokenize(tokenizer, texts: list[str], max_length: int, truncation: str, progress: bool):
    from thawline.models.text_input import tokenize

    chunk = 512
    parts = []
    bar = progress_bar(total=len(texts), desc="tokenize", unit="doc", disable=not progress)
    with bar:
        for start in range(0, len(texts), chunk):
            parts.append(tokenize(tokenizer, texts[start : start + chunk], max_length, truncation))
            bar.update(len(parts[-1][0]))
    if not parts:
        return tokenize(tokenizer, [], max_length, truncation)
    return tuple(torch.cat([p[i] for p in parts]) for i in range(3))


def _log_summary(count: int, info: dict[str, Any], max_length: int) -> None:
    if info["truncated"]:
        log.info("%d of %d documents are longer than %d tokens and were truncated (%s); "
                 "prepare.max_length and prepare.truncation set this", info["truncated"], count,
                 max_length, info["tokens"]["truncation"])  # fmt: skip
    if info["decoding"]["replaced"]:
        log.warning("%d document(s) had bytes that are not UTF-8, decoded as U+FFFD "
                    "(prepare.decoding: replace); listed in the manifest; first: %s",
                    info["decoding"]["replaced"], info["decoding"]["files"][0])  # fmt: skip
