"""Config errors (RELIABILITY.md 12): unknown keys, wrong types and impossible values give one line
naming the key and what is allowed, and nothing is written."""

from __future__ import annotations

import pytest

from thawline import cli
from thawline.config import ConfigError, config_from_dict


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
        (
            {"backbone": {"name": "resnet18"}},
            "must be 'timm:<model>', 'torchvision:<model>' or 'hf:",
        ),
        ({"backbone": {"name": "timm:resnet_nope"}}, "timm has no model 'resnet_nope'"),
        ({"backbone": {"name": "torchvision:resnet_nope"}}, "torchvision has no classification"),
        (
            {"backbone": {"name": "timm:resnet18", "weights": "packaged"}},
            "'packaged' weights exist only for timm:tf_efficientnet_lite0",
        ),
        ({"backbone": {"weights": "missing.pth"}}, "neither imagenet, packaged, none nor an"),
        ({"data": {"source": "imagefolder", "root": None}}, "data.root: required when data.source"),
        ({"data": {"source": "imagefolder", "root": "/no/such/dir"}}, "'/no/such/dir' does not"),
        ({"data": {"source": "torchvision", "name": "NotADataset"}}, "data.name: 'NotADataset'"),
        ({"data": {"source": "parquet"}}, "data.source: Input should be 'fashion-mnist'"),
        (
            {"data": {"source": "csv"}},
            "data.root: '/usr/share/datasets/fashion-mnist' is not a file",
        ),
        (
            {"head": {"lr": 0}},
            "head.lr: Input should be greater than 0, or input should be 'auto' (got 0)",
        ),
        (
            {"head": {"lr": -0.1}},
            "head.lr: Input should be greater than 0, or input should be 'auto' (got -0.1)",
        ),
        (
            {"head": {"batch_size": 0}},
            "head.batch_size: Input should be greater than 0, or input should be 'auto' (got 0)",
        ),
        (
            {"finetune": {"base_lr": 1e6}},
            "finetune.base_lr: Input should be less than or equal to 10",
        ),
        (
            {"finetune": {"strategy": "custom", "phases": []}},
            "finetune.phases: strategy 'custom' needs a non-empty list",
        ),
        ({"head": {"lrs": 0.1}}, "unknown key 'head.lrs'"),
    ],
)
def test_bad_config_is_one_line_naming_the_key(raw, expected):
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    message = str(err.value)
    assert expected in message
    assert "\n" not in message


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
