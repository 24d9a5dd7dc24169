"""Start-up cost: ``--help``, ``config`` and a disabled stage import no torch and open no MLflow
run (they took 4.7 s, 7.7 s and 16 s when the config pulled torch in through files.py).

Which heavy modules a command loads is the deterministic form of its start-up time; the seconds
themselves are in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml

from tests.conftest import REPO, shipped_params

HEAVY = ("torch", "torchvision", "timm", "mlflow", "prefect", "sklearn")


def loaded_after(code: str, cwd, env=None) -> set[str]:
    """The heavy top-level packages in sys.modules after running ``code`` in a fresh process."""
    probe = code + "\nimport sys, json\nprint(json.dumps(sorted({m.split('.')[0] for m in " \
        "sys.modules})))"  # fmt: skip
    done = subprocess.run([sys.executable, "-c", probe], cwd=cwd, env=env,
                          capture_output=True, text=True, check=True)  # fmt: skip
    return set(json.loads(done.stdout.strip().splitlines()[-1])) & set(HEAVY)


def test_help_and_config_import_no_torch(tmp_path):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    env = os.environ | {"THAWLINE_CACHE": str(tmp_path / "cache")}
    helped = "from thawline.cli import build_parser\nbuild_parser().format_help()"
    assert loaded_after(helped, tmp_path, env) == set()
    config = "from thawline.cli import main\nmain(['config'])"
    # The first check of a backbone name imports timm once; later ones read the remembered name.
    loaded_after(config, tmp_path, env)
    assert loaded_after(config, tmp_path, env) == set()


def test_a_disabled_stage_records_why_without_torch_or_an_mlflow_run(tmp_path):
    params = shipped_params()
    params["scratch"]["enabled"] = False
    params["tracking"]["enabled"] = True
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    code = "from thawline.cli import main\nassert main(['stage', 'scratch', '-q']) == 0"
    assert loaded_after(code, tmp_path, env) == set()
    record = json.loads((tmp_path / params["paths"]["scratch"] / "record.json").read_text())
    assert record == {"strategy": "scratch", "reason": "scratch.enabled is false",
                      "trained": False}  # fmt: skip
    assert not (tmp_path / "mlflow.db").exists()


def test_flow_serve_says_when_each_deployment_runs_next():
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from pipelines.deploy import schedule_lines
    from tests.conftest import small_config

    cfg = small_config(REPO / "unused")
    now = datetime(2026, 11, 30, 12, 0, tzinfo=ZoneInfo(cfg.flow.timezone))
    lines = schedule_lines(cfg, now)
    assert lines[0].startswith(f"thawline-training: cron '{cfg.flow.cron}' ({cfg.flow.timezone})")
    assert lines[1].startswith("thawline-retrain: cron") and all("next run 20" in x for x in lines)
