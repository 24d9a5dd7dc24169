"""The text pipeline on 40 real BBC articles and the packaged MiniLM: the tokenised store and its
fingerprint, extraction with reuse, gradual thawing (frozen layers unchanged, exact resume),
evaluation beside TF-IDF + SVM, the registered model over HTTP and ``thawline predict --text``."""

from __future__ import annotations

import html
import json
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from tests.registry_support import model_server, post
from tests.servers import VENV_BIN
from tests.text.conftest import text_config
from thawline.config import FinetuneParams
from thawline.data.store import PreparedStore
from thawline.features.assemble import build_model
from thawline.features.cache import FeatureCache
from thawline.stages import evaluate, extract, finetune, prepare, register
from thawline.training.thaw_loop import fine_tune
from thawline.training.trained_model import load_training_data


def test_the_store_holds_compact_tokens_and_its_fingerprint_covers_the_tokenizer(
    text_pipeline, tmp_path
):
    store = PreparedStore(text_pipeline.paths.prepared)
    train = store.load("train")
    assert train.tensors["input_ids"].dtype == torch.int16
    assert train.tensors["attention_mask"].dtype == torch.uint8
    assert train.inputs.shape == (store.count("train"), 2, 64)
    assert len(train.texts) == store.count("train") and train.texts[0].strip()
    assert store.tokens["max_length"] == 64 and len(store.tokens["tokenizer_sha256"]) == 64
    longer = text_config(tmp_path, text_pipeline.data.root, prepare={"max_length": 96})
    prepare.run(longer, progress=False)
    other = PreparedStore(longer.paths.prepared)
    assert other.fingerprint != store.fingerprint
    assert other.split_fingerprint("test") == store.split_fingerprint("test")  # same documents


def test_extract_reuses_the_cache_and_recomputes_only_changed_documents(text_pipeline, tmp_path):
    cached = FeatureCache(text_pipeline.paths.features)
    assert cached.num_features == 384 and cached.parts["pooling"] == "mean"
    again = extract.run(text_pipeline, progress=False)
    assert again.metrics["images_computed"] == 0
    cls = text_config(tmp_path, text_pipeline.data.root, backbone={"pooling": "cls"},
                      paths={"prepared": str(text_pipeline.paths.prepared),
                             "features": str(tmp_path / "cls")})  # fmt: skip
    result = extract.run(cls, progress=False)
    assert result.metrics["images_computed"] == sum(
        PreparedStore(cls.paths.prepared).count(s) for s in ("train", "val", "test"))  # fmt: skip
    mean_rows, _ = cached.load("train")
    cls_rows, _ = FeatureCache(cls.paths.features).load("train")
    assert not torch.allclose(mean_rows.float(), cls_rows.float())


OPTS = {
    "strategy": "custom", "batch_size": 8, "precision": "fp32", "deterministic": True,
    "keep_checkpoints": 3,
    "phases": [{"groups": 2, "epochs": 1, "lr": 1e-4}, {"groups": 3, "epochs": 1, "lr": 1e-4}],
}  # fmt: skip


class Stop(Exception):
    pass


def _thaw(cfg, folder, on_epoch_end=None, **changes):
    model = build_model(cfg)
    train, val = load_training_data(cfg)
    opts = FinetuneParams(**(OPTS | changes))
    return model, fine_tune(model, train, val, opts, 7, checkpoint_dir=folder,
                            on_epoch_end=on_epoch_end, progress=False)  # fmt: skip


def _stop_after_first(epoch, _metrics):
    if epoch == 1:
        raise Stop


def _history(result):
    return [{k: v for k, v in r.items() if k != "images_per_second"} for r in result.history]


def test_thawing_leaves_frozen_layers_alone_and_resumes_exactly(text_pipeline, tmp_path):
    before = {k: v.clone() for k, v in build_model(text_pipeline).state_dict().items()}
    _, whole = _thaw(text_pipeline, tmp_path / "whole")
    after = whole.model.state_dict()
    frozen = [k for k in before if ".embeddings." in k
              or any(f".encoder.layer.{i}." in k for i in range(3))]  # fmt: skip
    thawed = [k for k in before if any(f".encoder.layer.{i}." in k for i in (3, 4, 5))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in thawed)
    with pytest.raises(Stop):
        _thaw(text_pipeline, tmp_path / "cut", on_epoch_end=_stop_after_first)
    _, resumed = _thaw(text_pipeline, tmp_path / "cut")
    assert resumed.resumed_from == 1
    assert _history(resumed) == _history(whole)
    same = resumed.model.state_dict()
    assert all(torch.equal(v, same[k]) for k, v in after.items())


def test_lora_trains_adapters_and_the_merged_model_gives_the_adapter_model_logits(
    text_pipeline, tmp_path
):
    from thawline.models.lora import inject_lora, merge_lora

    before = {k: v.clone() for k, v in build_model(text_pipeline).state_dict().items()}
    _, result = _thaw(text_pipeline, tmp_path / "lora", thaw="lora", lora_rank=4,
                      phases=[{"groups": 2, "epochs": 1, "lr": 3e-3}])  # fmt: skip
    merged = result.model.state_dict()
    assert set(merged) == set(before)  # merged: a plain encoder, saved and served as one
    moved = [k for k in before if not torch.equal(before[k], merged[k])]
    assert moved and all(".encoder.layer.4." in k or ".encoder.layer.5." in k or "head" in k
                         for k in moved)  # fmt: skip
    # Merging is exact: an adapter model and its merge give the same logits.
    model = build_model(text_pipeline)
    inject_lora(model.features.backbone.model, "encoder.layer", 4, 8, 0.0)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    x = PreparedStore(text_pipeline.paths.prepared).load("test").inputs[:6]
    with torch.inference_mode():
        adapted = model(x)
        merge_lora(model.features.backbone.model)
        plain = model(x)
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert torch.allclose(adapted, plain, atol=1e-4)


def test_finetune_evaluate_register_serve_and_predict(text_pipeline, tmp_path):
    """The stages after train_head, then the registered model over HTTP and from the CLI."""
    cfg = text_pipeline
    finetune.run(cfg, progress=False)
    result = evaluate.run(cfg, progress=False)
    metrics = json.loads((cfg.paths.evaluation / "metrics.json").read_text())
    assert {"head_only_accuracy", "finetuned_accuracy", "tfidf_svm_accuracy"} <= set(metrics)
    assert not any("tta" in key for key in metrics)  # evaluate.tta: flip, but documents have none
    assert result.info["model"] in ("head_only", "finetuned")  # the baseline is never chosen
    gallery = json.loads((cfg.paths.evaluation / "gallery.json").read_text())
    assert gallery and {"true", "pred", "p", "text"} <= set(gallery[0])
    from thawline.reporting.html import write_report

    page = write_report(cfg).read_text()
    snippet = html.escape(gallery[0]["text"][:40], quote=True)
    assert "Top losses" in page and "tfidf_svm" in page and snippet in page
    record = register.run(cfg, progress=False).info
    uri = f"models:/{cfg.registry.model_name}@champion"
    documents = ["The chancellor's budget cut taxes for small firms and lifted share prices.",
                 "The midfielder signed a new contract with the club until 2027."]  # fmt: skip
    portable = onnx_probabilities(cfg.paths.model, documents)
    assert record["onnx"]["exported"] and record["onnx"]["inputs"] == [
        "input_ids",
        "attention_mask",
    ]
    with model_server(uri, cfg.tracking.uri, tmp_path) as base:
        status, body = post(base, {"inputs": {"text": documents}})
        assert status == 200, body
        rows = body["predictions"]
        assert len(rows) == 2 and all(len(r["top_labels"]) == 5 for r in rows)
        # The ONNX file and its tokenizer answer as the served model does.
        served = np.array([r["probabilities"] for r in rows])
        assert np.abs(served - portable).max() < 1e-3
        for payload, why in (
            ({"dataframe_records": [{"text": "   "}]}, "text 0: empty or whitespace only"),
            ({"dataframe_records": [{"text": 12}]}, "text 0: expected a string, got int"),
            ({"inputs": {"text": ["word"] * 1001}}, "1001 documents in one request; at most"),
        ):  # fmt: skip
            status, body = post(base, payload)
            assert status == 400 and why in body["message"], body
        status, body = post(base, {"inputs": {"text": documents[:1]}})
        assert status == 200  # still up and answering
    (tmp_path / "note.txt").write_text(documents[1])
    proc = subprocess.run(
        [str(VENV_BIN / "thawline"), "predict", "--model", uri, "--tracking-uri",
         cfg.tracking.uri, "--text", documents[0], str(tmp_path / "note.txt")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("text 1 ") and lines[1].startswith(str(tmp_path / "note.txt"))
    proc = subprocess.run(
        [str(VENV_BIN / "thawline"), "predict", "--model", uri, "--tracking-uri",
         cfg.tracking.uri, "--tta", "flip", "--text", documents[0]],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2 and "image models only; this is a text model" in proc.stderr
    (tmp_path / "rows.csv").write_text(f'text\n"{documents[0]}"\n"  "\n')
    proc = subprocess.run(
        [str(VENV_BIN / "thawline"), "predict", "--model", uri, "--tracking-uri",
         cfg.tracking.uri, str(tmp_path / "rows.csv")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2 and "rows.csv:3: empty or whitespace only" in proc.stderr


def test_text_finetune_under_torchrun_with_lora(text_pipeline, tmp_path):
    """``--nproc 2``: DistributedDataParallel over the encoder, LoRA adapters, the same code path
    as images; the saved model is merged and loads as a plain encoder."""
    from tests.integration.test_distributed import params_file, thawline_stage
    from thawline.models.storage import load_classifier

    params = params_file(text_pipeline, tmp_path, tracking=False, finetune="ddp",
                         checkpoints="checkpoints", stats="stats")  # fmt: skip
    log = thawline_stage(params, "finetune", "--nproc", "2", "-S", "finetune.thaw=lora",
                         "-S", "finetune.strategy=custom",
                         "-S", "finetune.phases=[{groups:2,epochs:1,lr:0.003}]")  # fmt: skip
    assert "distributed: 2 processes (gloo)" in log
    record = json.loads((tmp_path / "ddp" / "record.json").read_text())
    assert record["processes"] == 2 and record["trained"]
    model = load_classifier(tmp_path / "ddp" / "model")
    assert not any("lora" in name for name, _ in model.named_parameters())


def onnx_probabilities(model_dir: Path, documents: list[str]) -> np.ndarray:
    """What a user with only onnxruntime and tokenizers gets from register's model.onnx."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "model.tokenizer" / "tokenizer.json"))
    tokenizer.enable_padding()
    tokenizer.enable_truncation(256)
    encoded = tokenizer.encode_batch(documents)
    feeds = {
        "input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64),
    }
    session = onnxruntime.InferenceSession(str(model_dir / "model.onnx"),
                                           providers=["CPUExecutionProvider"])  # fmt: skip
    return session.run(None, feeds)[0]
