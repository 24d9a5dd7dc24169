"""Config errors: one line naming the key and what is allowed; nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from thawline import cli
from thawline.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]


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
