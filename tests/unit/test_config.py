"""The config: errors are one line naming the key and what is allowed, nothing written;
params.yaml and the code state the same defaults; the keys a stage reads are recorded."""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import REPO, makefile_overrides
from thawline import cli
from thawline.config import (
    Config,
    ConfigError,
    ExtractParams,
    config_from_dict,
    dump_config,
    load_config,
    record_reads,
)


def test_repo_params_file_is_valid():
    cfg = load_config(REPO / "params.yaml")
    assert cfg.backbone.name == "timm:tf_efficientnet_lite0"
    assert cfg.backbone.weights == "packaged"


def test_overrides_are_validated_like_the_file(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("extract:\n  batch_size: 8\n")
    assert load_config(params, ["extract.batch_size=16"]).extract.batch_size == 16
    assert load_config(params, ["extract.layers=[blocks.0, blocks.6]"]).extract.layers == [
        "blocks.0",
        "blocks.6",
    ]
    with pytest.raises(ConfigError, match="extract.batch_size: Input should be greater than 0"):
        load_config(params, ["extract.batch_size=0"])
    with pytest.raises(ConfigError, match="unknown key 'extract.nope'"):
        load_config(params, ["extract.nope=1"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(params, ["extract.batch_size"])


def test_overrides_take_yaml_and_dvc_s_hydra_form_alike(tmp_path):
    """The Makefile's `fast` profile (`make full`), written for `dvc exp run -S`, works with
    thawline -S."""
    hydra = "finetune.phases=[{groups:3,epochs:1,lr:0.001},{groups:-1,epochs:8,lr:0.001}]"
    spaced = (
        "finetune.phases=[{groups: 3, epochs: 1, lr: 0.001}, {groups: -1, epochs: 8, lr: 0.001}]"
    )
    params = tmp_path / "params.yaml"
    params.write_text(
        "finetune:\n  strategy: custom\n  phases: [{groups: 0, epochs: 1, lr: 0.001}]\n"
    )
    one, two = (load_config(params, [item]).finetune.phases for item in (hydra, spaced))
    assert one == two and one[1].groups == -1 and one[1].epochs == 8
    backbone = load_config(params, ["backbone={name:timm:resnet18,weights:none}"]).backbone
    assert backbone.name == "timm:resnet18" and backbone.weights == "none"


def test_the_makefiles_fast_profile_is_a_valid_config():
    """`make full`'s FAST_PROFILE, exactly as `dvc exp run -S` gets it, on the real params.yaml."""
    overrides = makefile_overrides("FAST_PROFILE")[1::2]  # -S key=value: the values
    finetune = load_config(REPO / "params.yaml", overrides).finetune
    assert finetune.strategy == "custom" and finetune.ema
    assert [(p.groups, p.epochs) for p in finetune.phases] == [(3, 1), (-1, 8)]


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("extract: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_cli_help_lists_stages(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["stage", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "prepare" in text and "extract" in text and "-S KEY=VALUE" in text


def _keys(tree: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out |= _keys(value, f"{prefix}{key}.")
        else:
            out.add(f"{prefix}{key}")
    return out


def test_params_yaml_states_every_default_and_the_code_agrees():
    """params.yaml is what users run and what the tests start from (tests/conftest.py); the
    typed sections' defaults are for code that builds one by hand. Neither may drift."""
    shipped = yaml.safe_load((REPO / "params.yaml").read_text())
    code = dump_config(Config())
    assert _keys(shipped) == _keys(code), "params.yaml and thawline.config differ in their keys"
    assert dump_config(config_from_dict(shipped)) == code
    drift = {k for k in _keys(code) if _value(shipped, k) != _value(code, k)}
    assert not drift, f"defaults differ between params.yaml and thawline.config: {drift}"


def _value(tree: dict, key: str):
    for part in key.split("."):
        tree = tree[part]
    return tree


def test_reads_of_params_are_recorded_with_their_keys():
    cfg = load_config(REPO / "params.yaml")
    with record_reads() as reads:
        _ = cfg.finetune.batch_size, cfg.seed, cfg.head.sweep.lr
        _ = cfg.finetune.model_copy(update={"strategy": "full"}).base_lr
        cfg.extract.model_dump()
        dump_config(cfg)  # provenance for logs is not a read
    assert reads == {"finetune.batch_size", "seed", "head.sweep.lr", "finetune.base_lr"} | {
        f"extract.{key}" for key in ExtractParams.model_fields
    }
