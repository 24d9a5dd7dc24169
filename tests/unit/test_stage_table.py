"""The stage table is the one list of stages: dvc.yaml, the CLI, the flows and the evaluated
models all follow it."""

from __future__ import annotations

import importlib
import inspect

import yaml

from tests.conftest import REPO
from thawline import cli
from thawline.config import Config
from thawline.stage_table import CANDIDATES, MODELS, NAMES, STAGES, stage, trained_by


def test_dvc_yaml_has_the_tables_stages_in_its_order_each_running_its_stage():
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert list(dvc) == list(NAMES)
    for name, entry in dvc.items():
        assert entry["cmd"] == f"thawline stage {name}"
        outs = [next(iter(o)) if isinstance(o, dict) else o for o in entry["outs"]]
        assert f"${{paths.{stage(name).output}}}" in outs, name


def test_every_stage_module_has_run_and_every_entry_names_real_params():
    fields = Config.model_fields
    for entry in STAGES:
        run = importlib.import_module(entry.module).run
        assert "progress" in inspect.signature(run).parameters
        assert entry.output in fields["paths"].annotation.model_fields
        if entry.nproc_section:
            assert "nproc" in fields[entry.nproc_section].annotation.model_fields
        assert all(earlier in NAMES[: NAMES.index(entry.name)] for earlier in entry.builds_on)


def test_the_cli_and_the_flows_take_their_lists_from_the_table():
    parser = cli.build_parser()
    stage_parser = parser._subparsers._group_actions[0].choices["stage"]
    choices = next(a.choices for a in stage_parser._actions if a.dest == "name")
    assert list(choices) == list(NAMES)
    from pipelines.training_flow import DESCRIPTION

    assert " -> ".join(NAMES) == DESCRIPTION
    assert MODELS == ("head_only", "finetuned", "scratch")
    assert CANDIDATES == ("head_only", "finetuned")
    assert trained_by("finetuned").name == "finetune"
