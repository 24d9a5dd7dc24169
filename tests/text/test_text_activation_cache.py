"""Thaw phases of a text backbone on cached boundary activations (finetune.activation_cache):
the packaged MiniLM cut between encoder layers gives the live model's loss and gradients, a
cached phase trains and resumes exactly, and only the top's weights move. 40 BBC articles."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.text.test_text_pipeline import Stop, _history, _stop_after_first, _thaw
from thawline.data.store import PreparedStore
from thawline.features.assemble import build_model
from thawline.training.activation_cache import (
    STORE_DTYPE,
    Cut,
    TopNetwork,
    bottom_forward,
    build_store,
    cut_for,
)
from thawline.training.phases import Phase
from thawline.training.unfreeze import apply_phase

CACHED = {
    "phases": [{"groups": 2, "epochs": 2, "lr": 1e-4}, {"groups": -1, "epochs": 1, "lr": 1e-4}],
    "activation_cache": "always",
    "activation_views": 4,  # text is never augmented: one view is stored whatever this says
}


def test_the_text_top_on_cached_hidden_states_matches_the_live_model(text_pipeline):
    model = build_model(text_pipeline).train()
    apply_phase(model, Phase(2, 1, 1e-4))
    model.eval()  # dropout off on both paths: the frozen part runs in eval mode when cached
    cut = cut_for(model, 2)
    assert isinstance(cut, Cut) and cut.boundary == "encoder.layer.4"  # layers 4 and 5 train
    assert cut_for(model, 0).boundary == "the pooling"  # head only: the whole encoder cached
    train = PreparedStore(text_pipeline.paths.prepared).load("train")
    x, y = train.inputs[:8].clone(), train.labels[:8]
    x[1::2, :, 20:] = 0  # every second document ends early: padding the mask must keep out
    loss_fn = nn.CrossEntropyLoss()

    def loss_and_grads(forward):
        model.zero_grad(set_to_none=True)
        loss = loss_fn(forward(), y)
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()
                             if p.grad is not None}  # fmt: skip

    live_loss, live_grads = loss_and_grads(lambda: model.network(x))
    with torch.no_grad():
        hidden, mask = bottom_forward(cut, x)
    assert hidden.shape == (8, x.shape[-1], 384)
    top = TopNetwork(model, cut.top)
    cached_loss, cached_grads = loss_and_grads(lambda: top((hidden, mask)))
    assert cached_grads.keys() == live_grads.keys()
    assert all(".encoder.layer.4." in n or ".encoder.layer.5." in n or n.startswith("head.")
               for n in cached_grads)  # fmt: skip
    assert cached_loss == pytest.approx(live_loss, abs=1e-5)
    for name, grad in live_grads.items():
        torch.testing.assert_close(cached_grads[name], grad, rtol=1e-3, atol=1e-5)
    # Stored in float16, padded to the inputs' length, then trimmed back per batch.
    stored_loss, _ = loss_and_grads(lambda: top((hidden.to(STORE_DTYPE).float(), mask)))
    assert stored_loss == pytest.approx(live_loss, rel=1e-2)


def test_the_text_store_pads_to_the_inputs_and_trims_each_batch(text_pipeline, tmp_path):
    from thawline.config import FinetuneParams
    from thawline.devices import Precision

    model = build_model(text_pipeline).eval()
    cut = cut_for(model, 2)
    inputs = PreparedStore(text_pipeline.paths.prepared).load("train").inputs.clone()
    inputs[::3, :, 30:] = 0  # every third document is 30 tokens long
    opts = FinetuneParams(**CACHED, strategy="custom")
    store = build_store(cut, model.preprocess, inputs, opts, 7, Precision(None),
                        torch.device("cpu"), tmp_path, "digest")  # fmt: skip
    assert not any(m.training for m in model.modules())  # every module's mode left alone
    assert store.views.shape == (1, len(inputs), inputs.shape[-1], 384)
    assert len(list((tmp_path / "digest").glob("view-*.safetensors"))) == 1
    rows = torch.tensor([0, 3])
    hidden, mask = store.batch(rows, torch.zeros(2, dtype=torch.long), "cpu")
    longest = int(inputs[rows, 1].sum(1).max())
    assert (
        longest == 30
        and hidden.shape == (2, 30, 384)
        and torch.equal(mask, inputs[rows, 1, :longest].long())
    )
    with torch.no_grad():  # each document as the live frozen part gives it, alone
        alone, _ = bottom_forward(cut, model.preprocess(inputs[3:4]))
    real = int(inputs[3, 1].sum())
    torch.testing.assert_close(hidden[1, :real], alone[0, :real].to(STORE_DTYPE).float(),
                               rtol=1e-2, atol=1e-2)  # fmt: skip
    again = build_store(cut, model.preprocess, inputs, opts, 7, Precision(None),
                        torch.device("cpu"), tmp_path, "digest")  # fmt: skip
    assert torch.equal(again.views, store.views)  # loaded, not recomputed
    model.train()  # as in a phase: the frozen part runs in eval mode, then goes back
    build_store(cut, model.preprocess, inputs, opts, 7, Precision(None), torch.device("cpu"),
                tmp_path, "another")  # fmt: skip
    assert all(m.training for m in model.modules())


def test_a_cached_text_phase_trains_only_the_top_and_resumes_exactly(text_pipeline, tmp_path):
    before = {k: v.clone() for k, v in build_model(text_pipeline).state_dict().items()}
    _, whole = _thaw(text_pipeline, tmp_path / "whole", **CACHED)
    assert [p["cached"] for p in whole.activation_cache] == [True, False]
    assert whole.activation_cache[0]["boundary"] == "encoder.layer.4"
    (store,) = (tmp_path / "whole" / ".activations").iterdir()
    assert len(list(store.glob("view-*.safetensors"))) == 1
    with pytest.raises(Stop):
        _thaw(text_pipeline, tmp_path / "cut", on_epoch_end=_stop_after_first, **CACHED)
    _, resumed = _thaw(text_pipeline, tmp_path / "cut", **CACHED)
    assert resumed.resumed_from == 1
    assert _history(resumed) == _history(whole)
    same = resumed.model.state_dict()
    assert all(torch.equal(v, same[k]) for k, v in whole.model.state_dict().items())
    # Cached phase alone: the layers below the boundary never move.
    _, top_only = _thaw(
        text_pipeline, tmp_path / "top", **CACHED | {"phases": CACHED["phases"][:1]}
    )
    after = top_only.model.state_dict()
    frozen = [k for k in before if ".embeddings." in k
              or any(f".encoder.layer.{i}." in k for i in range(4))]  # fmt: skip
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in before if ".encoder.layer.5." in k)
