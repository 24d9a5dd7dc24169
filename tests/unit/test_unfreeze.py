"""Gradual unfreezing: phases, per-group LRs, frozen groups untouched (gradients, weights, BN)."""

from __future__ import annotations

import pytest
import torch

from thawline.config import ConfigError, FinetuneParams, config_from_dict
from thawline.models.backbone import create_backbone
from thawline.models.classifier import Classifier
from thawline.models.head import Head
from thawline.models.preprocess import PooledFeatures, Preprocess
from thawline.training.phases import (
    Phase,
    Timeline,
    epochs_per_phase,
    group_lrs,
    resolve_phases,
    timeline_schedule,
)
from thawline.training.unfreeze import (
    apply_phase,
    bn_running_stats,
    depthwise_names,
    layer_names,
    param_groups,
    set_attention_dropout,
    unfrozen_groups,
)

LARGE = 100_000  # training images: epochs_per_phase auto gives one epoch


@pytest.fixture(scope="module")
def model() -> Classifier:
    torch.manual_seed(0)
    backbone = create_backbone(config_from_dict({"backbone": {"weights": "none"}}).backbone)
    preprocess = Preprocess.from_backbone(backbone, 32, 1.0)
    head = Head(backbone.num_features, 10)
    spec = {"classes": [str(i) for i in range(10)], "image_size": 32}
    return Classifier(PooledFeatures(backbone, []), head, preprocess, spec)


def test_presets_resolve_to_phases():
    head_only = FinetuneParams(strategy="head_only", base_lr=0.01)
    assert resolve_phases(head_only, 8, LARGE) == [Phase(0, 1, 0.01)]
    full = FinetuneParams(strategy="full", epochs_per_phase=3)
    assert resolve_phases(full, 8, LARGE) == [Phase(8, 3, 1e-3)]
    gradual = FinetuneParams(strategy="gradual", gradual_steps=3)
    assert [p.groups for p in resolve_phases(gradual, 8, LARGE)] == [0, 3, 6, 8]
    every = resolve_phases(FinetuneParams(strategy="gradual", gradual_steps=None), 4, LARGE)
    assert [p.groups for p in every] == [0, 1, 2, 3, 4]
    custom = FinetuneParams(
        strategy="custom",
        phases=[{"groups": 0, "epochs": 2, "lr": 0.01}, {"groups": -1, "epochs": 1, "lr": 0.001}],
    )
    assert resolve_phases(custom, 5, LARGE) == [Phase(0, 2, 0.01), Phase(5, 1, 0.001)]
    too_many = FinetuneParams(strategy="custom", phases=[{"groups": 9, "epochs": 1, "lr": 0.1}])
    with pytest.raises(ValueError, match=r"phases\[0\].groups: 9, but the backbone has only 5"):
        resolve_phases(too_many, 5, LARGE)


def test_auto_epochs_give_small_sets_enough_steps():
    """Each phase sees at least phase_images images: one epoch of a large set, more of a small."""
    opts = FinetuneParams(batch_size=64, phase_images=10_000)
    assert epochs_per_phase(opts, 54_000) == 1
    assert epochs_per_phase(opts, 10_000) == 2  # 156 full batches: 9,984 images an epoch
    assert epochs_per_phase(opts, 1_000) == 11  # 15 full batches of 64
    assert epochs_per_phase(opts, 200) == 53
    assert epochs_per_phase(opts, 10) == 1_000  # fewer images than a batch: one step an epoch
    assert epochs_per_phase(FinetuneParams(epochs_per_phase=3), 200) == 3


@pytest.mark.parametrize(
    ("finetune", "message"),
    [
        ({"strategy": "custom"}, "finetune.phases: strategy 'custom' needs a non-empty list"),
        ({"phases": [{"groups": 1, "epochs": 1, "lr": 0.1}]}, "used only with strategy 'custom'"),
        ({"base_lr": 0}, "finetune.base_lr: Input should be greater than 0"),
        ({"strategy": "custom", "phases": [{"groups": 1, "epochs": 0, "lr": 1}]}, "epochs"),
        ({"strategy": "everything"}, "finetune.strategy: Input should be 'auto', 'head_only'"),
        ({"lr_decay": 1.5}, "finetune.lr_decay: Input should be less than or equal to 1"),
        ({"epochz": 1}, "unknown key 'finetune.epochz'"),
    ],
)
def test_bad_finetune_config_is_one_line(finetune, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        config_from_dict({"finetune": finetune})


def test_group_lrs_decay_from_the_top_and_explicit_list():
    opts = FinetuneParams(lr_decay=0.5)
    lrs = group_lrs(opts, Phase(2, 1, 0.1), 4)
    assert lrs == pytest.approx([0.0, 0.0, 0.1 * 0.5**2, 0.1 * 0.5, 0.1])  # stem .. top, head
    explicit = FinetuneParams(group_lrs=[1e-5, 1e-4, 1e-3])
    assert group_lrs(explicit, Phase(3, 1, 0.01), 3) == [1e-5, 1e-4, 1e-3, 0.01]
    assert group_lrs(explicit, Phase(1, 1, 0.01), 3) == [0.0, 0.0, 1e-3, 0.01]
    with pytest.raises(ValueError, match="group_lrs: 3 values, but the backbone has 4"):
        group_lrs(explicit, Phase(1, 1, 0.01), 4)


def test_each_group_gets_its_lr_in_each_phase():
    opts = FinetuneParams(lr_decay=0.5, warmup_fraction=0.0)
    phases = [Phase(0, 2, 0.1), Phase(1, 1, 0.01), Phase(3, 1, 0.001)]
    lrs = [group_lrs(opts, p, 3) for p in phases]
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(4)]
    optimizer = torch.optim.AdamW([{"params": [p], "lr": 1.0} for p in params])
    steps_per_epoch = 5
    schedule = timeline_schedule(optimizer, Timeline(phases, lrs, steps_per_epoch, 0.0))
    seen = []
    for step in range(4 * steps_per_epoch):
        if step in (0, 10, 15):  # the first step of each phase: the peak with no warm-up
            seen.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        schedule.step()
    assert seen[0] == pytest.approx([0, 0, 0, 0.1])
    assert seen[1] == pytest.approx([0, 0, 0.005, 0.01])
    assert seen[2] == pytest.approx([0.000125, 0.00025, 0.0005, 0.001])


def test_a_retry_runs_the_phase_again_at_a_lower_lr_and_a_stop_ends_the_timeline():
    phases = [Phase(0, 2, 0.1), Phase(1, 1, 0.01), Phase(3, 1, 0.001)]
    lrs = [group_lrs(FinetuneParams(lr_decay=0.5), p, 3) for p in phases]
    timeline = Timeline(phases, lrs, steps=5, warmup_fraction=0.0)
    assert timeline.epochs == 4 and [timeline.run_of(e) for e in range(5)] == [0, 0, 1, 2, 2]
    assert [timeline.ends_run(done) for done in (1, 2, 3, 4)] == [False, True, True, True]
    timeline.retry(1, 0.1)  # phase 2 ended worse: once more at a tenth of its LRs
    assert timeline.epochs == 5 and timeline.run_of(3) == 2 and timeline.runs[2].retry
    assert timeline.phase(3) == Phase(1, 1, pytest.approx(0.001))
    assert timeline.lr(15, 3) == pytest.approx(0.001)  # the retry's first step: its peak
    assert timeline.lr(20, 3) == pytest.approx(0.001)  # then phase 3 at its own LR
    restored = Timeline(phases, lrs, steps=5, warmup_fraction=0.0)
    restored.load_state(timeline.state())
    assert restored.runs == timeline.runs
    timeline.stop_after(2)  # the retry ended worse too: the thaw stops there
    assert timeline.epochs == 4 and len(timeline.runs) == 3


def test_param_groups_cover_backbone_groups_then_head(model):
    groups = param_groups(model, 0.05)
    names = layer_names(model)
    assert len(groups) == len(names) + 1
    assert [len(g["params"]) for g in groups[:-1]] == [len(n) for n in names]
    assert groups[-1]["params"] == list(model.head.parameters())
    assert {g["weight_decay"] for g in groups} == {0.05}


def test_frozen_groups_get_no_gradient_and_do_not_move(model):
    n = len(layer_names(model))
    phase = Phase(2, 1, 1e-2)
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay=0.1))
    lrs = group_lrs(FinetuneParams(), phase, n)
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    apply_phase(model, phase)
    assert unfrozen_groups(model) == [n - 2, n - 1]
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(8) % 10
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
    named = dict(model.features.backbone.model.named_parameters())
    frozen = [name for group in layer_names(model)[: n - 2] for name in group]
    thawed = [name for group in layer_names(model)[n - 2 :] for name in group]
    assert all(named[name].grad is None for name in frozen)
    prefix = "features.backbone.model."
    after = model.state_dict()
    assert all(torch.equal(before[prefix + name], after[prefix + name]) for name in frozen)
    assert any(not torch.equal(before[prefix + name], after[prefix + name]) for name in thawed)
    assert not torch.equal(before["head.net.1.weight"], after["head.net.1.weight"])
    _check_bn_stats(before, after, model, frozen_groups=n - 2)


def _check_bn_stats(before, after, model, frozen_groups):
    """Running stats of frozen groups' BatchNorm are unchanged; the top group's moved."""
    prefix = "features.backbone.model."
    stats = bn_running_stats(model.features.backbone.model)
    modules = {name.rsplit(".", 1)[0] for name in stats}
    groups = layer_names(model)
    frozen = {n.rsplit(".", 1)[0] for g in groups[:frozen_groups] for n in g} & modules
    thawed = {n.rsplit(".", 1)[0] for g in groups[frozen_groups:] for n in g} & modules
    assert frozen and thawed
    for module in frozen:
        key = f"{prefix}{module}.running_mean"
        assert torch.equal(before[key], after[key]), module
    assert any(
        not torch.equal(before[f"{prefix}{m}.running_mean"], after[f"{prefix}{m}.running_mean"])
        for m in thawed
    )


def test_train_depthwise_false_keeps_depthwise_kernels_and_trains_the_rest(model):
    backbone = model.features.backbone.model
    depthwise = depthwise_names(backbone)
    convs = [m for m in backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert depthwise and len(depthwise) < sum(1 for _ in convs)  # Lite0 has both kinds
    assert all(name.endswith("conv_dw.weight") for name in depthwise)
    model.train()
    apply_phase(model, Phase(len(layer_names(model)), 1, 1e-3), train_depthwise=False)
    named = dict(backbone.named_parameters())
    assert not any(named[name].requires_grad for name in depthwise)
    grouped = {name for group in layer_names(model) for name in group}
    assert all(named[name].requires_grad for name in grouped - depthwise)
    before = {name: named[name].detach().clone() for name in grouped}
    optimizer = torch.optim.AdamW(p for p in model.parameters() if p.requires_grad)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    torch.nn.functional.cross_entropy(model(images), torch.arange(8) % 10).backward()
    optimizer.step()
    assert all(torch.equal(before[name], named[name]) for name in depthwise)
    pointwise = [name for name in grouped - depthwise if name.endswith("conv_pw.weight")]
    assert pointwise and all(not torch.equal(before[n], named[n]) for n in pointwise)
    assert unfrozen_groups(model) == list(range(len(layer_names(model))))
    model.train()
    apply_phase(model, Phase(len(layer_names(model)), 1, 1e-3))  # the default trains them
    assert all(named[name].requires_grad for name in depthwise)


def test_freeze_bn_keeps_every_batchnorm_in_eval(model):
    model.train()
    apply_phase(model, Phase(len(layer_names(model)), 1, 1e-3), freeze_bn=True)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns and not any(m.training for m in bns)
    assert model.head.training
    model.train()
    apply_phase(model, Phase(len(layer_names(model)), 1, 1e-3))
    assert all(m.training for m in bns)


def test_attention_dropout_reaches_timm_vits_and_leaves_cnns_alone(model):
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, attn_drop_rate=0.1)
    assert set_attention_dropout(vit, 0.0) == len(vit.blocks)
    assert all(block.attn.attn_drop.p == 0.0 for block in vit.blocks)
    assert set_attention_dropout(model, 0.0) == 0  # Lite0: no attention modules
