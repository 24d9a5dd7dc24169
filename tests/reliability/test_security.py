"""Security (RELIABILITY.md 19, 20): untrusted checkpoints and weights never run code, models are
stored as safetensors, and the servers bind to loopback unless asked otherwise."""

from __future__ import annotations

import ast
import contextlib
import ipaddress
import os
import pickle
import shutil
from pathlib import Path

import psutil
import pytest
import torch
from torch import nn

from tests.conftest import REPO
from tests.servers import VENV_BIN, background_server, free_port, server_env
from thawline.files import sha256_file, write_json
from thawline.models.weights import WeightsError, read_state_dict
from thawline.training.checkpoint import COMPLETE, STATE, CheckpointError, load_checkpoint
from thawline.training.checkpoint import save_checkpoint as save_checkpoint_

SOURCES = REPO / "src" / "thawline"


class Payload:
    """Unpickling this runs ``touch <path>``: the file appears only if code ran."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_the_payload_really_runs_code_when_unpickled(tmp_path):
    """The control: plain pickle runs the payload, so its absence below means it was refused."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_checkpoint_with_a_pickle_payload_is_refused_and_runs_nothing(tmp_path):
    model = nn.Linear(4, 2)
    folder = save_checkpoint_(tmp_path / "ck", 1, model.state_dict(), {"epoch": 1})
    marker = tmp_path / "pwned"
    (folder / STATE).write_bytes(pickle.dumps(Payload(marker)))
    # Reseal the checkpoint so its sha256 record matches: only weights_only stands in the way.
    digests = {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.name != COMPLETE}
    write_json(folder / COMPLETE, {"epoch": 1, "sha256": digests})
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(folder)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_backbone_weights_with_a_pickle_payload_are_refused_and_run_nothing(tmp_path):
    marker = tmp_path / "pwned"
    weights = tmp_path / "weights.pth"
    torch.save({"state_dict": Payload(marker)}, weights)  # what a malicious download holds
    with pytest.raises(WeightsError, match="weights.pth: not a plain tensor state_dict"):
        read_state_dict(weights)
    assert not marker.exists()


def test_every_torch_load_in_the_sources_is_weights_only_and_nothing_imports_pickle():
    """A new ``torch.load`` without ``weights_only=True`` (or a pickle import) fails here."""
    problems = []
    for path in sorted(SOURCES.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                safe = any(
                    k.arg == "weights_only" and ast.unparse(k.value) == "True"
                    for k in node.keywords
                )
                if not safe:
                    problems.append(f"{where}: torch.load without weights_only=True")
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if {"pickle", "dill", "joblib", "cloudpickle"} & {n.split(".")[0] for n in names}:
                    problems.append(f"{where}: imports a pickle library")
    assert problems == []


def test_saved_and_registered_models_hold_no_pickles(registry_scenario, registry_pipeline):
    """Weights are safetensors; the registered MLflow model loads with pickle refused."""
    store = Path(registry_pipeline.cfg.tracking.artifacts)
    folders = [store, registry_pipeline.cfg.paths.head]
    files = [p for folder in folders for p in folder.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)
    pickled = [p for p in files if p.suffix in {".pkl", ".pickle", ".pt", ".pth", ".joblib"}]
    assert pickled == []
    assert os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "false"  # tests/conftest.py


# 20. Servers bind to loopback by default.


def listening_addresses(pid: int) -> set[str]:
    """The IP addresses that process ``pid`` and its children listen on (TCP)."""
    root = psutil.Process(pid)
    found = set()
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            for conn in process.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    found.add(conn.laddr.ip)
    return found


def assert_loopback_only(addresses: set[str]) -> None:
    assert addresses, "the server listens nowhere"
    assert all(ipaddress.ip_address(a).is_loopback for a in addresses), addresses


@contextlib.contextmanager
def started(command: list[str], ping: str, folder: Path, env: dict[str, str]):
    """Start a server with ``background_server``; yield its listening addresses."""
    before = set(psutil.pids())
    with background_server(command, ping, folder, env):
        mine = [p for p in psutil.pids() if p not in before]
        addresses: set[str] = set()
        for pid in mine:
            with contextlib.suppress(psutil.NoSuchProcess):
                if psutil.Process(pid).ppid() not in mine:  # a root of the new process tree
                    addresses |= listening_addresses(pid)
        yield addresses


def mlflow_server(tmp_path: Path, port: int, *host: str) -> list[str]:
    return [str(VENV_BIN / "mlflow"), "server", *host, "--port", str(port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
            "--default-artifact-root", str(tmp_path / "artifacts")]  # fmt: skip


def test_mlflow_server_listens_on_loopback_only_unless_asked(tmp_path):
    port = free_port()
    ping = f"http://127.0.0.1:{port}/health"
    with started(mlflow_server(tmp_path, port), ping, tmp_path, server_env()) as addresses:
        assert_loopback_only(addresses)
    # The control: asked for all interfaces, the same check sees it.
    port = free_port()
    command = mlflow_server(tmp_path, port, "--host", "0.0.0.0")
    ping = f"http://127.0.0.1:{port}/health"
    with started(command, ping, tmp_path, server_env()) as addresses, pytest.raises(AssertionError):
        assert_loopback_only(addresses)


def test_prefect_server_listens_on_loopback_only(tmp_path):
    port = free_port()
    home = tmp_path / "prefect"
    env = server_env(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home / 'prefect.db'}",
    )
    env.pop("PREFECT_API_URL", None)
    command = [str(VENV_BIN / "prefect"), "server", "start", "--port", str(port)]
    ping = f"http://127.0.0.1:{port}/api/health"
    with started(command, ping, tmp_path, env) as addresses:
        assert_loopback_only(addresses)
    shutil.rmtree(home, ignore_errors=True)
