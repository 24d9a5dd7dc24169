"""A fine-tuning phase's LR range test (training/phase_lr.py) on a tiny real model and data:
it suggests a usable LR and leaves the model and the random streams exactly as they were."""

from __future__ import annotations

import math

import torch

from tests.finetune_support import tiny_data, tiny_model
from thawline.config import FinetuneParams
from thawline.devices import Precision
from thawline.training.phase_lr import find_phase_lr
from thawline.training.phases import Phase, group_lrs
from thawline.training.unfreeze import layer_names


def test_the_sweep_reads_the_model_and_leaves_it_and_the_rng_as_they_were(prepared_small):
    train, _ = tiny_data(prepared_small.paths.prepared)
    model = tiny_model()
    opts = FinetuneParams(batch_size=32, base_lr="auto", freeze_bn=False)  # BN stats move too
    groups = len(layer_names(model))
    phase = Phase(2, 1, 1.0, auto=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(3)
    rng = torch.get_rng_state()
    found, seconds = find_phase_lr(model, train, phase, group_lrs(opts, phase, groups), opts,
                                   seed=7, precision=Precision(None), steps=40)  # fmt: skip
    assert torch.equal(torch.get_rng_state(), rng)  # dropout's stream: untouched
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in model.parameters())
    assert 0 < len(found.losses) <= 40 and all(math.isfinite(v) for v in found.losses)
    assert found.lrs[0] < found.valley < found.lrs[-1] and seconds > 0
