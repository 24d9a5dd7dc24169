"""Real servers for tests: started on a free loopback port, waited for, always stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

VENV_BIN = Path(sys.executable).parent  # mlflow's servers run uvicorn from PATH


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(**extra: str) -> dict[str, str]:
    return os.environ | {"PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"} | extra


@contextlib.contextmanager
def background_server(
    command: list[str], ping: str, folder: Path, env: dict[str, str], timeout: float = 180
) -> Iterator[subprocess.Popen]:
    """Run ``command`` in its own process group until ``ping`` answers 200; yield the process;
    stop it after."""
    log_path = folder / f"{Path(command[0]).name}-{command[1]}.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  cwd=folder, start_new_session=True)  # fmt: skip
        try:
            _wait_for(ping, server, log_path, timeout)
            yield server
        finally:
            with contextlib.suppress(ProcessLookupError):  # a test may have killed it already
                os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=10)


def _wait_for(url: str, server: subprocess.Popen, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert server.poll() is None, log_path.read_text()[-3000:]
        assert time.monotonic() < deadline, f"no answer on {url} in {timeout} s"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
