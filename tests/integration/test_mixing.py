"""Mixup / CutMix and RandAugment (timm) in the fine-tuning loop: they train, they resume
exactly, they keep phases off cached activations, and a bad RandAugment string is one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.finetune_support import Stop, comparable, run, same_weights
from thawline.config import FinetuneParams, config_from_dict
from thawline.errors import ConfigError
from thawline.training.mixing import make_mixer, make_randaugment, rand_augmented

MIXED = {"mixup_alpha": 0.4, "cutmix_alpha": 1.0, "randaugment": "rand-m9-mstd0.5"}


def test_randaugment_changes_images_and_keeps_their_form(finetune_data):
    (images, _), _ = finetune_data
    transform = make_randaugment(FinetuneParams(randaugment="rand-n2-m9"))
    out = rand_augmented(images[:16], transform)
    assert out.shape == images[:16].shape and out.dtype == torch.uint8
    assert not torch.equal(out, images[:16])


def test_mixup_makes_soft_targets_that_sum_to_one():
    mixer = make_mixer(FinetuneParams(mixup_alpha=0.4), 10)
    np.random.seed(0)  # timm draws the mixing weight from numpy's generator
    x = torch.randn(8, 3, 32, 32)
    mixed, y = mixer(x.clone(), torch.arange(8))
    assert y.shape == (8, 10) and torch.allclose(y.sum(1), torch.ones(8))
    assert not torch.equal(mixed, x)
    assert make_mixer(FinetuneParams(), 10) is None


def test_a_mixed_run_trains_resumes_exactly_and_runs_live(finetune_data, tmp_path):
    changes = MIXED | {"activation_cache": "always"}
    whole = run(finetune_data, tmp_path / "straight", **changes)
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in whole.history[1:])
    assert not whole.activation_cache[0]["cached"]
    assert "mixup" in whole.activation_cache[0]["why"]
    with pytest.raises(Stop):
        run(finetune_data, tmp_path / "stopped", stop_after=1, **changes)
    resumed = run(finetune_data, tmp_path / "stopped", **changes)
    assert comparable(resumed.history) == comparable(whole.history)
    same_weights(whole.model, resumed.model)


def test_a_bad_randaugment_string_names_the_key():
    with pytest.raises(ConfigError, match="finetune.randaugment: 'flip' is not a timm"):
        config_from_dict({"finetune": {"randaugment": "flip"}})
