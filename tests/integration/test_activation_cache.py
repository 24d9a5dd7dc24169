"""Thaw phases on cached boundary activations (finetune.activation_cache): the same loss and
gradients as the live frozen part, a store rebuilt exactly when its inputs change, an exact
resume, and a decision recorded with its numbers. Tiny Lite0 (random init) at 32 px."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.finetune_support import (
    OPTS,
    Stop,
    comparable,
    run,
    same_weights,
    tiny_model,
)
from thawline.config import FinetuneParams
from thawline.devices import Precision
from thawline.training.activation_cache import (
    STORE_DTYPE,
    Cut,
    TopNetwork,
    bottom_forward,
    cut_for,
    decide,
    fingerprint,
    measure,
)
from thawline.training.batches import training_batch
from thawline.training.checkpoint import load_checkpoint, load_latest
from thawline.training.phases import Phase
from thawline.training.unfreeze import apply_phase, depthwise_names
from thawline.training.validate import metrics_from_sums, validation_sums

CACHED = {
    "phases": [{"groups": 2, "epochs": 2, "lr": 3e-3}, {"groups": -1, "epochs": 1, "lr": 1e-3}],
    "activation_cache": "always",
    "activation_views": 3,
}


def test_the_top_on_cached_activations_matches_the_live_model(finetune_data):
    (images, labels), _ = finetune_data
    model = tiny_model().train()
    apply_phase(model, Phase(2, 1, 1e-3), freeze_bn=True)
    cut = cut_for(model, 2)
    assert isinstance(cut, Cut) and cut.boundary == "blocks.5"  # the top 2 of 8 groups train
    x = training_batch(images[:16], model.preprocess, augment=True, max_shift=2,
                       generator=torch.Generator().manual_seed(0))  # fmt: skip
    y, loss_fn = labels[:16], nn.CrossEntropyLoss()

    def loss_and_grads(forward):
        model.zero_grad(set_to_none=True)
        loss = loss_fn(forward(), y)
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()
                             if p.grad is not None}  # fmt: skip

    live_loss, live_grads = loss_and_grads(lambda: model.network(x))
    with torch.no_grad():
        h = bottom_forward(cut, x)
    top = TopNetwork(model, cut.top)
    cached_loss, cached_grads = loss_and_grads(lambda: top(h))
    assert cached_grads.keys() == live_grads.keys()  # the same parameters learn...
    assert cached_loss == pytest.approx(live_loss, abs=1e-5)  # ...from the same loss
    for name, grad in live_grads.items():
        torch.testing.assert_close(cached_grads[name], grad, rtol=1e-4, atol=1e-6)
    # Stored in float16, within that type's rounding.
    stored_loss, _ = loss_and_grads(lambda: top(h.to(STORE_DTYPE).float()))
    assert stored_loss == pytest.approx(live_loss, rel=1e-2)


def test_a_cached_phase_trains_records_its_decision_and_resumes_exactly(finetune_data, tmp_path):
    whole = run(finetune_data, tmp_path / "straight", **CACHED)
    plans = whole.activation_cache
    assert [p["cached"] for p in plans] == [True, False]
    assert plans[0]["boundary"] == "blocks.5" and plans[0]["why"] == "activation_cache: always"
    assert "no frozen stage" in plans[1]["why"]  # every group thawed: nothing to cache
    assert whole.history[2]["train_loss"] < whole.history[1]["train_loss"] * 1.5
    stores = list((tmp_path / "straight" / ".activations").iterdir())
    assert len(stores) == 1 and len(list(stores[0].glob("view-*.safetensors"))) == 3

    with pytest.raises(Stop):  # stopped inside the cached phase, after its first epoch
        run(finetune_data, tmp_path / "stopped", stop_after=1, **CACHED)
    resumed = run(finetune_data, tmp_path / "stopped", **CACHED)
    assert resumed.resumed_from == 1
    assert comparable(resumed.history) == comparable(whole.history)
    same_weights(whole.model, resumed.model)

    live = run(finetune_data, tmp_path / "live", **CACHED | {"activation_cache": "never"})
    assert [p["cached"] for p in live.activation_cache] == [False, False]
    assert not (tmp_path / "live" / ".activations").exists()


@pytest.mark.parametrize("cache", ["always", "never"])
def test_train_depthwise_false_trains_around_the_kernels_live_and_cached(
    finetune_data, tmp_path, cache
):
    start = tiny_model().state_dict()
    prefix = "features.backbone.model."
    depthwise = {prefix + n for n in depthwise_names(tiny_model().features.backbone.model)}
    pointwise = {k for k in start if k.endswith("conv_pw.weight") and ".blocks.6." in k}
    changes = {"activation_cache": cache, "train_depthwise": False, "rollback_tolerance": 1.0}
    run(finetune_data, tmp_path, **CACHED | changes)  # no rollback: the last epoch's weights
    (plan,) = [p for p in tmp_path.iterdir() if p.is_dir() and p.name != ".activations"]
    last = load_latest(plan)
    assert last is not None and last.epoch == 3
    assert depthwise and all(torch.equal(last.model[k], start[k]) for k in depthwise)
    assert pointwise and all(not torch.equal(last.model[k], start[k]) for k in pointwise)


def test_a_cached_phase_validates_on_the_top_alone_and_scores_as_live(
    finetune_data, tmp_path, monkeypatch, caplog
):
    import thawline.training.thaw_trainer as trainer

    live_calls = []
    live = trainer.predict_logits
    monkeypatch.setattr(
        trainer, "predict_logits", lambda *a, **k: live_calls.append(1) or live(*a, **k)
    )
    caplog.set_level("INFO", logger="thawline.training.cached_phases")
    result = run(finetune_data, tmp_path, **CACHED | {"ema": True})
    (_, _), (val_images, val_labels) = finetune_data
    # Epoch 0 live; the cached phase's 2 epochs score raw and EMA weights on the stored
    # validation states (computed once); the full thaw after it runs live again (raw + EMA).
    assert len(live_calls) == 1 + 2
    computed = [r for r in caplog.records if "validation states of" in r.message]
    assert len(computed) == 1 and f"of {len(val_labels)} items at blocks.5" in computed[0].message
    (plan,) = [p for p in tmp_path.iterdir() if p.is_dir() and p.name != ".activations"]
    opts = FinetuneParams(**OPTS | CACHED)
    for epoch in (1, 2):  # the cached phase's epochs, scored again live from their checkpoints
        model = tiny_model()
        model.load_state_dict(load_checkpoint(plan / f"epoch-{epoch:04d}").model)
        again = metrics_from_sums(validation_sums(
            model, val_images, val_labels, batch_size=2 * opts.batch_size,
            label_smoothing=opts.label_smoothing))  # fmt: skip
        scored = result.history[epoch]
        assert scored["val_accuracy"] == again["val_accuracy"]
        assert scored["val_loss"] == pytest.approx(again["val_loss"], rel=1e-5)


def test_the_store_is_keyed_by_its_inputs(finetune_data):
    (images, _), _ = finetune_data
    opts, precision = FinetuneParams(**OPTS | CACHED), Precision(None)
    model = tiny_model()
    digest = fingerprint(cut_for(model, 2), model.preprocess, images, opts, 7, precision)
    assert fingerprint(cut_for(model, 2), model.preprocess, images, opts, 7, precision) == digest
    assert (
        fingerprint(cut_for(model, 3), model.preprocess, images, opts, 7, precision) != digest
    )  # boundary
    other = tiny_model()
    with torch.no_grad():
        other.features.backbone.model.conv_stem.weight.mul_(1.01)  # frozen weights changed
    assert fingerprint(cut_for(other, 2), other.preprocess, images, opts, 7, precision) != digest
    top_changed = tiny_model()
    with torch.no_grad():
        top_changed.head.net[1].weight.mul_(2)  # a trainable part: the store still holds
    assert (
        fingerprint(cut_for(top_changed, 2), top_changed.preprocess, images, opts, 7, precision)
        == digest
    )
    assert (
        fingerprint(cut_for(model, 2), model.preprocess, images[1:], opts, 7, precision) != digest
    )


def test_auto_measures_decides_and_leaves_short_phases_live(finetune_data, tmp_path):
    (images, labels), _ = finetune_data
    model = tiny_model()
    timed = measure(model, 2, model.preprocess, images, labels, 16, Precision(None),
                    torch.device("cpu"), True)  # fmt: skip
    assert {"live", "frozen", "top", "bytes_per_image"} <= timed.keys()
    # Positive times, not an order between them: a test that races the clock on a busy
    # machine fails at random (it did in CI, under two xdist workers).
    assert all(0 < timed[name] < 60 for name in ("live", "frozen", "top"))
    assert timed["bytes_per_image"] == 112 * 2 * 2 * 2  # blocks.4's output at 32 px, float16
    slow_live = timed | {"live": 10 * timed["live"]}
    assert decide(slow_live, 1000, 10, 4, 4.0)[0]
    assert not decide(timed | {"top": timed["live"]}, 1000, 10, 4, 4.0)[0]  # nothing saved
    paid, why = decide(slow_live, 1000, 10, 4, 1e-9)
    assert not paid and "over activation_cache_gb" in why
    # The tiny run's phases are a few steps: live, with the reason, and no measurement.
    result = run(finetune_data, tmp_path, **CACHED | {"activation_cache": "auto"})
    assert "too short" in result.activation_cache[0]["why"]
    assert "seconds_per_image" not in result.activation_cache[0]
