"""dvc.yaml lists, for every stage, each param key its ``run(cfg)`` reads and every module it
imports, so DVC reruns a stage when, and only when, something it depends on changed.

The keys are recorded while the stages run on tiny real data (``record_reads``); the modules come
from the import graph (grimp, which import-linter is built on). A key read only on a path this run
does not take (an image folder's ``prepare.bad_images``) is listed by hand: a superset is fine,
a missing key is a stage that DVC would not rerun.
"""

from __future__ import annotations

import importlib

import grimp
import pytest
import yaml

from tests.conftest import REPO, small_config
from thawline.config import record_reads
from thawline.stage_table import STAGES

# Paths that are not DVC outputs on purpose: resumable checkpoints, run statistics.
UNTRACKED = {"paths.checkpoints", "paths.stats"}


def dvc_stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def listed(key: str, params: list) -> bool:
    names = [p for p in params if isinstance(p, str)]
    return any(key == name or key.startswith(f"{name}.") for name in names)


@pytest.fixture(scope="module")
def reads(prepared_small, tmp_path_factory) -> dict[str, set[str]]:
    """Every stage run in order on the shared tiny store, recording the params each reads."""
    tmp = tmp_path_factory.mktemp("keys")
    tracking = {"uri": f"sqlite:///{tmp / 'mlflow.db'}", "artifacts": str(tmp / "mlruns")}
    cfg = small_config(tmp, tracking=tracking, finetune={"epochs_per_phase": 1})
    found = {}
    for entry in STAGES:
        with record_reads() as keys:
            importlib.import_module(entry.module).run(cfg, progress=False)
        found[entry.name] = keys
    return found


def test_every_param_a_stage_reads_is_listed_for_it(reads):
    stages = dvc_stages()
    for name, keys in reads.items():
        params = stages[name].get("params", [])
        missing = sorted(k for k in keys if not k.startswith("paths.") and not listed(k, params))
        assert not missing, f"dvc.yaml: stage '{name}' reads {missing} but does not list them"


def test_every_path_a_stage_reads_is_one_of_its_deps_or_outs(reads):
    stages = dvc_stages()
    for name, keys in reads.items():
        entry = stages[name]
        places = [next(iter(o)) if isinstance(o, dict) else o
                  for o in entry.get("deps", []) + entry.get("outs", [])]  # fmt: skip
        for key in sorted(k for k in keys if k.startswith("paths.") and k not in UNTRACKED):
            assert any(p == f"${{{key}}}" or p.startswith(f"${{{key}}}/") for p in places), (
                f"dvc.yaml: stage '{name}' reads {key} but has it in neither deps nor outs"
            )


def test_every_module_a_stage_imports_is_a_code_dep_of_it():
    graph = grimp.build_graph("thawline", include_external_packages=False)
    stages = dvc_stages()
    for entry in STAGES:
        code = [d for d in stages[entry.name]["deps"] if d.startswith("src/")]
        modules = graph.find_upstream_modules(entry.module) | {entry.module}
        for module in sorted(modules - {"thawline"}):
            path = "src/" + module.replace(".", "/")
            covered = any(path == d.removesuffix(".py") or path.startswith(f"{d}/")
                          for d in code)  # fmt: skip
            assert covered, f"dvc.yaml: stage '{entry.name}' imports {module}, not in its deps"
