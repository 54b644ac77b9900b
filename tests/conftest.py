"""Fixtures that run the real handler (`python -m vault_handler`) with the real OpenBao.

One shared, initialized handler serves the tests that don't disturb it; tests
that kill, stop or misconfigure get their own. Every server listens on a free
loopback port and every process is gone when the suite ends.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from azure.storage.blob import ContainerClient

from .azurite import Azurite, fill_like_vault, new_container
from .ingestion import IngestionServer

REPO = Path(__file__).resolve().parent.parent
LOCAL_TEMPLATE = REPO / "config" / "local.hcl.tpl"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.01)
    raise TimeoutError(f"nothing listening on {port} after {timeout}s")


def wait_until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def _is_vault_server(pid: int) -> bool:
    try:
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return False
    return b"server" in arguments[1:2]


@dataclass
class RunningHandler:
    process: subprocess.Popen
    port: int
    data_dir: Path
    log_path: Path
    env: dict[str, str] = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def root_token(self) -> str:
        return json.loads((self.data_dir / "init.json").read_text())["root_token"]

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def vault_pids(self) -> list[int]:
        """Vault children only: the Azure SDK's import briefly runs `uname` as a child too."""
        return [pid for pid in children(self.process.pid) if alive(pid) and _is_vault_server(pid)]

    def request(
        self, method: str, path: str, body: bytes | dict | None = None, headers: dict | None = None, timeout: float = 30
    ) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            payload = json.dumps(body).encode() if isinstance(body, dict) else body
            connection.request(method, path, body=payload, headers=headers or {})
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.request("GET", "/v1/sys/health", timeout=5)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"handler not healthy after {timeout}s; log:\n{self.log[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def handler_env(port: int, data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULTFN_", "VAULT_", "FUNCTIONS_"))}
    env.update(VAULTFN_PORT=str(port), VAULTFN_DATA_DIR=str(data_dir), PYTHONPATH=str(REPO))
    env.update(extra)
    return env


def spawn_handler(tmp: Path, wait: bool = True, data_dir: Path | None = None, **extra: str) -> RunningHandler:
    port = free_port()
    data_dir = data_dir or tmp / "data"
    env = handler_env(port, data_dir, **extra)
    log_path = tmp / f"handler-{port}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "vault_handler"], cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    handler = RunningHandler(process, port, data_dir, log_path, env)
    if wait:
        try:
            wait_for_port(port, 15, process)
        except Exception:
            handler.stop(signal.SIGKILL)
            raise
    return handler


@pytest.fixture
def make_handler(tmp_path: Path) -> Iterator:
    """Start handlers of the test's own; all are stopped, Vault children included, afterwards."""
    started: list[RunningHandler] = []

    def make(wait: bool = True, data_dir: Path | None = None, **extra: str) -> RunningHandler:
        directory = tmp_path / f"h{len(started)}"
        directory.mkdir()
        handler = spawn_handler(directory, wait=wait, data_dir=data_dir, **extra)
        started.append(handler)
        return handler

    yield make
    for handler in started:
        _stop_for_good(handler)


def _stop_for_good(handler: RunningHandler) -> None:
    pids = handler.vault_pids() if handler.process.poll() is None else []
    handler.stop()
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHandler]:
    """The shared handler: initialized OpenBao with kv-v2 at secret/ and a file audit device."""
    tmp = tmp_path_factory.mktemp("shared")
    audit_log = tmp / "audit.log"
    template = tmp / "shared.hcl.tpl"
    template.write_text(
        LOCAL_TEMPLATE.read_text()
        + f'\naudit "file" "test" {{\n  options {{\n    file_path = "{audit_log}"\n  }}\n}}\n'
    )
    handler = spawn_handler(tmp, VAULTFN_EAGER_START="true", VAULT_CONFIG_TEMPLATE=str(template))
    try:
        handler.wait_healthy()
        status, _, body = handler.request(
            "POST", "/v1/sys/mounts/secret", {"type": "kv", "options": {"version": "2"}}, token_header(handler)
        )
        assert status == 204, body
        handler.audit_log = audit_log  # type: ignore[attr-defined]
        yield handler
    finally:
        _stop_for_good(handler)


def token_header(handler: RunningHandler) -> dict[str, str]:
    return {"X-Vault-Token": handler.root_token}


@pytest.fixture
def ingestion() -> Iterator[IngestionServer]:
    """A local Application Insights ingestion endpoint; pass its `connection_string` to a handler."""
    server = IngestionServer()
    yield server
    server.close()


# --------------------------------------------------------------------------------------------
# Azurite (the Azure Storage emulator): one blob service for the session, started only when a
# test asks for it; each `vault_container` is a fresh container filled like a Vault's.
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """The shared Azurite. A test that stops it must start it again (`azurite.restart()`)."""
    with Azurite() as emulator:
        yield emulator


@pytest.fixture
def vault_container(azurite: Azurite) -> Iterator[tuple[ContainerClient, dict[str, bytes]]]:
    """(ContainerClient, {blob name: content}) for a new container holding 1,000 Vault-like blobs."""
    if not azurite.running:  # a previous test stopped it and did not restart it
        azurite.start()
    container = new_container(azurite, "vault")
    contents = fill_like_vault(container, 1000)
    yield container, contents
    if azurite.running:
        try:
            container.delete_container()
        except Exception:
            pass
