"""Saved models: a head (``paths.head``) and a complete classifier (``model/`` folders), on disk.

Both are a folder of two files, safetensors weights (no pickle) and a JSON spec::

    head.safetensors  + head.json    the head's weights and feature standardisation; its spec
                                     plus what train_head records (classes, the features it
                                     was trained on, history, chosen params)
    model.safetensors + model.json   every parameter and buffer of backbone + head; how to
                                     rebuild it (backbone, hooked layers, preprocessing, head
                                     spec, classes, stored image size)
    hf/                              text models: config.json and the tokenizer's files, so a
                                     saved or served text model needs no hub and no package
    model.onnx (+ model.tokenizer/)  the same model for onnxruntime, written by register

This module alone knows those names. Loading rebuilds the architecture from the JSON with random
init (no download), then loads the tensors, so loading never unpickles anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import load_file, save_file

from thawline.files import atomic_path, read_json, write_json
from thawline.models.classifier import Classifier, build_classifier
from thawline.models.head import Head
from thawline.models.preprocess import preprocess_from_spec

HEAD_WEIGHTS, HEAD_SPEC = "head.safetensors", "head.json"
MODEL_WEIGHTS, MODEL_SPEC = "model.safetensors", "model.json"
HF_FILES = "hf"
MODEL_ONNX = "model.onnx"  # written by register (thawline.models.onnx_export), not read here


def _save(folder: Path, module: torch.nn.Module, spec: dict, names: tuple[str, str], kind: str):
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    with atomic_path(folder / names[0]) as tmp:
        save_file(state, str(tmp), metadata={"format": f"thawline-{kind}"})
    write_json(folder / names[1], spec)
    return folder


def save_head(head: Head, folder: Path, meta: dict[str, Any]) -> Path:
    """Write ``head.safetensors`` and ``head.json`` (the spec plus ``meta``: history, params...)."""
    return _save(Path(folder), head, {"spec": head.spec(), **meta}, (HEAD_WEIGHTS, HEAD_SPEC),
                 "head")  # fmt: skip


def read_head_meta(folder: Path) -> dict[str, Any]:
    """A saved head's ``head.json``: spec, classes, feature fingerprint, history, params."""
    return read_json(Path(folder) / HEAD_SPEC)


def load_head(folder: Path) -> tuple[Head, dict[str, Any]]:
    """Load a saved head and its metadata (``spec``, ``history``, ...)."""
    meta = read_head_meta(folder)
    head = Head.from_spec(meta["spec"])
    head.load_state_dict(load_file(str(Path(folder) / HEAD_WEIGHTS)))
    return head.eval(), meta


class HeadFiles(NamedTuple):
    spec: Path
    weights: Path


def head_files(folder: Path) -> HeadFiles:
    """The head's spec and weights files (for existence checks and content hashes)."""
    return HeadFiles(Path(folder) / HEAD_SPEC, Path(folder) / HEAD_WEIGHTS)


def save_classifier(model: Classifier, folder: Path) -> Path:
    """Write ``model.safetensors`` and ``model.json`` into ``folder`` (atomically, each), and
    for a text model its config and tokenizer files into ``hf/``."""
    source = getattr(model.features.backbone, "folder", None)
    if source is not None and Path(source).resolve() != (Path(folder) / HF_FILES).resolve():
        from thawline.models.text_weights import copy_model_files

        copy_model_files(Path(source), Path(folder) / HF_FILES)
    return _save(Path(folder), model, model.spec, (MODEL_WEIGHTS, MODEL_SPEC), "classifier")


def load_classifier(folder: Path) -> Classifier:
    """Rebuild a saved classifier (random init, no download) and load its tensors."""
    spec: dict[str, Any] = read_json(Path(folder) / MODEL_SPEC)
    name = spec["backbone"]
    if name.startswith("hf:"):  # the architecture and tokenizer saved beside the weights
        name = f"hf:{(Path(folder) / HF_FILES).resolve()}"
    model = build_classifier(
        name, "none", spec["layers"], preprocess_from_spec(spec["preprocess"]),
        Head.from_spec(spec["head"]), spec["classes"], spec["image_size"],
        spec.get("pooling", "mean"),
    )  # fmt: skip
    model.spec["backbone"] = spec["backbone"]
    if "temperature" in spec:
        model.spec["temperature"] = float(spec["temperature"])
    model.load_state_dict(load_file(str(Path(folder) / MODEL_WEIGHTS)))
    if spec["backbone"].startswith("hf:"):  # what turns a request's strings into its input
        from transformers import AutoTokenizer

        model.tokenizer = AutoTokenizer.from_pretrained(Path(folder) / HF_FILES)
    return model.eval()


def classifier_files(folder: Path) -> tuple[Path, Path]:
    """A saved classifier's weights and spec files."""
    return Path(folder) / MODEL_WEIGHTS, Path(folder) / MODEL_SPEC


def is_saved_classifier(folder: Path) -> bool:
    return all(path.is_file() for path in classifier_files(folder))
