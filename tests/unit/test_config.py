"""Config errors: one line naming the key and what is allowed; nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from thawline import cli
from thawline.config import ConfigError, config_from_dict, load_config

REPO = Path(__file__).resolve().parents[2]


def test_repo_params_file_is_valid():
    cfg = load_config(REPO / "params.yaml")
    assert cfg.backbone.name == "timm:tf_efficientnet_lite0"
    assert cfg.backbone.weights == "packaged"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"extrct": {}}, "unknown key 'extrct'; allowed here: seed, paths, data"),
        (
            {"extract": {"batchsize": 3}},
            "unknown key 'extract.batchsize'; allowed here: image_size",
        ),
        ({"extract": {"batch_size": -1}}, "extract.batch_size: Input should be greater than 0"),
        (
            {"extract": {"batch_size": "many"}},
            "extract.batch_size: Input should be a valid integer",
        ),
        ({"extract": {"dtype": "int8"}}, "extract.dtype: Input should be 'float16', 'bfloat16'"),
        ({"prepare": {"val_fraction": 1.5}}, "prepare.val_fraction: Input should be less than 1"),
        ({"backbone": {"name": "resnet18"}}, "must be 'timm:<model>' or 'torchvision:<model>'"),
        ({"backbone": {"name": "timm:resnet_nope"}}, "timm has no model 'resnet_nope'"),
        ({"backbone": {"name": "torchvision:resnet_nope"}}, "torchvision has no classification"),
        (
            {"backbone": {"name": "timm:resnet18", "weights": "packaged"}},
            "'packaged' weights exist only for timm:tf_efficientnet_lite0",
        ),
        ({"backbone": {"weights": "missing.pth"}}, "neither imagenet, packaged, none nor an"),
        ({"data": {"source": "imagefolder"}}, "data.root: required when data.source"),
        ({"data": {"source": "imagefolder", "root": "/no/such/dir"}}, "'/no/such/dir' does not"),
        ({"data": {"source": "torchvision", "name": "NotADataset"}}, "data.name: 'NotADataset'"),
        ({"data": {"source": "csv"}}, "data.source: Input should be 'fashion-mnist'"),
    ],
)
def test_bad_config_is_one_line_naming_the_key(raw, expected):
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    message = str(err.value)
    assert expected in message
    assert "\n" not in message


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


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("extract: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_cli_config_error_exits_2_and_writes_nothing(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    out = tmp_path / "prepared"
    params.write_text(f"paths:\n  prepared: {out}\nprepare:\n  limit_per_class: -5\n")
    assert cli.main(["stage", "prepare", "-p", str(params)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "thawline: config error: "
        f"{params}: prepare.limit_per_class: Input should be greater than 0 (got -5)"
    )
    assert not out.exists()


def test_cli_help_lists_stages(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["stage", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "prepare" in text and "extract" in text and "-S KEY=VALUE" in text
