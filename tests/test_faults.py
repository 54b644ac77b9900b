"""Faults, with the real handler and OpenBao: Vault killed under load, hung, failing to start; the
handler stopped mid-request; clients that stall. Each test states what a client sees meanwhile."""

from __future__ import annotations

import http.client
import itertools
import json
import math
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from shared.telemetry import METRIC_VAULT_RESTARTS
from vault_handler.scheduler import timer_payload
from vault_handler.server import DRAIN_TIMEOUT

from .conftest import LOCAL_TEMPLATE, RunningHandler, alive, token_header, wait_until
from .ingestion import IngestionServer

FAIL_FAST = 2.0  # a failed request answers within this (seconds)
NEVER_HANGS = 15.0  # no request during a fault takes longer than this


@dataclass
class Outcome:
    name: str
    started: float  # time.monotonic()
    seconds: float
    status: int | None  # None: the client got no HTTP answer (error says why)
    headers: dict[str, str]
    body: bytes
    error: str = ""

    @property
    def errors(self) -> list[str]:
        return json.loads(self.body).get("errors", []) if self.body.startswith(b"{") else []


def timed(send: Callable[[], tuple[int, dict[str, str], bytes]], name: str = "") -> Outcome:
    started = time.monotonic()
    try:
        status, headers, body = send()
    except OSError as error:  # http.client's errors included: a timeout, a reset, a closed connection
        return Outcome(name, started, time.monotonic() - started, None, {}, b"", repr(error))
    return Outcome(name, started, time.monotonic() - started, status, headers, body)


def exchange(
    connection: http.client.HTTPConnection, method: str, path: str, body: bytes | None, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    """One request on a keep-alive connection."""
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    return response.status, dict(response.getheaders()), response.read()


def host_timer_body(function: str) -> bytes:
    """What the Functions host POSTs to fire a timer function."""
    now = datetime.now(UTC)
    return json.dumps(timer_payload(function, now - timedelta(minutes=5), now, now + timedelta(minutes=5))).encode()


def mount_kv(handler: RunningHandler) -> dict[str, str]:
    """Enable a kv (v1) engine at kv/; returns the root token header."""
    token = token_header(handler)
    assert handler.request("POST", "/v1/sys/mounts/kv", {"type": "kv"}, token)[0] == 204
    return token


# -- Vault killed under load ------------------------------------------------------------------


def load_worker(handler: RunningHandler, n: int, token: dict, until: float, acked: dict, tried: dict) -> list[Outcome]:
    """Write kv/load<n> with a rising sequence number, read it back, ask sys/health; in a loop."""
    connection = http.client.HTTPConnection("127.0.0.1", handler.port, timeout=NEVER_HANGS)
    outcomes: list[Outcome] = []
    seq = 0
    while time.monotonic() < until:
        step = len(outcomes) % 3
        if step == 0:
            seq += 1
            tried[n] = seq
            body = json.dumps({"seq": seq}).encode()
            request = ("PUT", f"/v1/kv/load{n}", body)
        else:
            request = ("GET", f"/v1/kv/load{n}", None) if step == 1 else ("GET", "/v1/sys/health", None)
        outcome = timed(lambda c=connection, r=request: exchange(c, *r, token), f"{request[0]} {request[1]}")
        outcomes.append(outcome)
        if outcome.status is None:
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", handler.port, timeout=NEVER_HANGS)
        elif step == 0 and outcome.status == 204:
            acked[n] = seq
    connection.close()
    return outcomes


def test_vault_kill_9_under_load(make_handler, ingestion: IngestionServer) -> None:
    """Vault kill -9 under 8 clients: all answer in < 15 s (2xx; 502 if a write was in flight), restart counted."""
    handler: RunningHandler = make_handler(
        VAULTFN_EAGER_START="true",
        APPLICATIONINSIGHTS_CONNECTION_STRING=ingestion.connection_string,
        APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL="true",
    )
    handler.wait_healthy()
    token = mount_kv(handler)
    assert handler.request("PUT", "/v1/kv/before", {"v": "written before the kill"}, token)[0] == 204
    (first,) = handler.vault_pids()

    acked: dict[int, int] = {}
    tried: dict[int, int] = {}
    until = time.monotonic() + 4.0
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(load_worker, handler, n, token, until, acked, tried) for n in range(8)]
        time.sleep(1.0)
        killed_at = time.monotonic()
        os.kill(first, signal.SIGKILL)
        outcomes = [outcome for future in futures for outcome in future.result()]

    # Requests were in flight at the kill; none hangs, none is dropped without an answer. Codes seen:
    # 200/204, and 502 for a write Vault took down with it (a read is sent again after the restart).
    # Never 503: requests that arrive while Vault restarts wait for it (well within the limit).
    assert any(o.started <= killed_at <= o.started + o.seconds for o in outcomes)
    assert max(o.seconds for o in outcomes) < NEVER_HANGS
    assert [o for o in outcomes if o.status is None] == []
    assert {o.status for o in outcomes} <= {200, 204, 502}, sorted({o.status for o in outcomes})
    for outcome in [o for o in outcomes if o.status == 502]:
        assert outcome.name.startswith("PUT"), outcome
        assert outcome.started < killed_at + 0.5 and outcome.started + outcome.seconds > killed_at, outcome
        assert outcome.seconds < FAIL_FAST, outcome
        assert "Vault closed the connection before answering" in outcome.errors[0], outcome
    # Vault came back during the load: requests sent after the kill succeeded again.
    after = [o for o in outcomes if o.started > killed_at + 0.5]
    assert after and all(o.status in (200, 204) for o in after), [(o.name, o.status) for o in after if o.status >= 300]

    # Acknowledged writes survived: each key holds its last acknowledged value or a later attempt.
    (second,) = handler.vault_pids()
    assert second != first and not alive(first)
    status, _, body = handler.request("GET", "/v1/kv/before", headers=token)
    assert status == 200 and json.loads(body)["data"] == {"v": "written before the kill"}
    for n, seq in acked.items():
        status, _, body = handler.request("GET", f"/v1/kv/load{n}", headers=token)
        assert status == 200 and seq <= json.loads(body)["data"]["seq"] <= tried[n]

    # The restart is in the log and reaches telemetry (the keep-warm invocation flushes it).
    assert "Vault exited unexpectedly with code -9; restarting it" in handler.log
    assert handler.log.count("is listening on 127.0.0.1:") == 2
    assert handler.request("POST", "/keepwarm_timer", host_timer_body("keepwarm_timer"), timeout=60)[0] == 200
    restarts = ingestion.wait_for(
        "MetricData", lambda data: any(m["name"] == METRIC_VAULT_RESTARTS for m in data["metrics"])
    )
    assert [m["value"] for m in restarts["metrics"] if m["name"] == METRIC_VAULT_RESTARTS] == [1]


# -- Vault hanging ---------------------------------------------------------------------------


def test_hung_vault_gets_504_while_host_invocations_answer(make_handler) -> None:
    """Vault SIGSTOPped (limit 2 s): 6 requests get 504 in 2-4.5 s; keepwarm_timer meanwhile: 200, unhealthy."""
    handler: RunningHandler = make_handler(VAULTFN_EAGER_START="true", VAULTFN_MAX_REQUEST_DURATION="2s")
    handler.wait_healthy()
    token = mount_kv(handler)
    requests = [
        ("GET", "/v1/sys/health", None),
        ("GET", "/v1/kv/a", None),
        ("PUT", "/v1/kv/a", {"v": "1"}),
        ("PUT", "/v1/kv/b", {"v": "2"}),
        ("LIST", "/v1/kv", None),
        ("DELETE", "/v1/kv/a", None),
    ]
    (vault_pid,) = handler.vault_pids()
    os.kill(vault_pid, signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(len(requests) + 1) as pool:
            futures = [
                pool.submit(timed, lambda r=r: handler.request(*r, token, timeout=NEVER_HANGS)) for r in requests
            ]
            keepwarm = pool.submit(
                timed, lambda: handler.request("POST", "/keepwarm_timer", host_timer_body("keepwarm_timer"))
            )
            outcomes = [future.result() for future in futures]
            invocation = keepwarm.result()
    finally:
        os.kill(vault_pid, signal.SIGCONT)
    for outcome in outcomes:
        assert outcome.status == 504, outcome
        assert 2 <= outcome.seconds < 4.5, outcome
        assert "did not answer within 2s" in outcome.errors[0]
    # The host's timer invocation is answered (not hung): a successful invocation reporting a bad state.
    assert invocation.status == 200 and invocation.seconds < 4.5, invocation
    result = json.loads(invocation.body)["ReturnValue"]
    assert result["healthy"] is False and result["state"] == "unhealthy" and result["status"] == 504, result
    assert handler.request("GET", "/v1/sys/health", timeout=NEVER_HANGS)[0] == 200


# -- Vault failing to start, again and again ---------------------------------------------------


def failure_times(handler: RunningHandler, count: int, timeout: float, on_new: Callable[[int], None]) -> list[float]:
    """When each of the first `count` 'Vault failed to start' lines appeared; calls on_new(k) for the k-th."""
    seen: list[float] = []
    deadline = time.monotonic() + timeout
    while len(seen) < count and time.monotonic() < deadline:
        failures = handler.log.count("Vault failed to start")
        while len(seen) < min(failures, count):
            seen.append(time.monotonic())
            on_new(len(seen))
        time.sleep(0.01)
    return seen


def test_vault_failing_to_start_backs_off_and_503s_at_once_with_the_reason(make_handler, tmp_path: Path) -> None:
    """Vault exiting at start: retried after 0.5, 1, 2 s...; each request: 503 in < 1 s, reason, Retry-After."""
    template = tmp_path / "bogus-storage.hcl.tpl"
    template.write_text(LOCAL_TEMPLATE.read_text().replace('storage "raft"', 'storage "bogus"'))
    handler: RunningHandler = make_handler(
        VAULTFN_EAGER_START="true", VAULT_CONFIG_TEMPLATE=str(template), VAULTFN_MAX_REQUEST_DURATION="10s"
    )
    asked = []

    def ask(failures: int) -> None:  # in a thread, not to delay noticing the next failure
        send = lambda: handler.request("GET", "/v1/sys/health", timeout=NEVER_HANGS)  # noqa: E731
        asked.append((failures, pool.submit(timed, send)))

    with ThreadPoolExecutor(4) as pool:
        seen = failure_times(handler, 4, timeout=20, on_new=ask)
        answers = [(failures, future.result()) for failures, future in asked]
    assert len(seen) == 4, handler.log[-2000:]
    gaps = [later - earlier for earlier, later in itertools.pairwise(seen)]
    # Backoff 0.5 s doubling (README); each gap is the backoff plus OpenBao's ~0.3 s to fail.
    for k, gap in enumerate(gaps):
        assert gap >= 0.5 * 2**k * 0.9, gaps
    assert gaps[0] < gaps[1] < gaps[2], gaps

    for failures, outcome in answers:
        assert outcome.status == 503, outcome
        assert outcome.seconds < 1.0, f"503 after {outcome.seconds:.1f}s, not at once (failures so far: {failures})"
        (error,) = outcome.errors
        assert "Vault failed to start" in error and "exited with code 1" in error, error
        # Seconds until the next attempt, whose backoff after `failures` failures is 0.5 * 2**(failures - 1).
        assert 1 <= int(outcome.headers["Retry-After"]) <= max(1, math.ceil(0.5 * 2 ** (failures - 1))), outcome
    retry_afters = [int(outcome.headers["Retry-After"]) for _, outcome in answers]
    assert retry_afters == sorted(retry_afters) and retry_afters[-1] > retry_afters[0], retry_afters
    assert "unknown storage type bogus" in handler.log  # OpenBao's own words stay in the log
    assert handler.process.poll() is None and handler.vault_pids() == []


# -- SIGTERM with requests in flight -----------------------------------------------------------


def slow_chunks(payload: bytes, pieces: int, seconds: float, sending: threading.Event) -> Iterator[bytes]:
    size = -(-len(payload) // pieces)
    for start in range(0, len(payload), size):
        yield payload[start : start + size]
        sending.set()
        time.sleep(seconds / pieces)


def slow_upload(handler: RunningHandler, token: dict, payload: bytes, sending: threading.Event) -> Outcome:
    def send() -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", handler.port, timeout=NEVER_HANGS)
        try:
            body = slow_chunks(payload, 30, 1.5, sending)
            return exchange(connection, "PUT", "/v1/kv/upload", body, token)  # chunked
        finally:
            connection.close()

    return timed(send, "slow upload")


def slow_download(handler: RunningHandler, token: dict, reading: threading.Event) -> Outcome:
    def send() -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", handler.port, timeout=NEVER_HANGS)
        # A small receive buffer: the handler keeps streaming to a slow reader through the shutdown.
        connection.sock = socket.socket()
        connection.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        connection.sock.settimeout(NEVER_HANGS)
        connection.sock.connect(("127.0.0.1", handler.port))
        try:
            connection.request("GET", "/v1/kv/big", headers=token)
            response = connection.getresponse()
            reading.set()
            body = b""
            while chunk := response.read(65536):
                body += chunk
                time.sleep(0.03)  # 3 MB in ~1.5 s
            return response.status, dict(response.getheaders()), body
        finally:
            connection.close()

    return timed(send, "slow download")


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_sigterm_finishes_in_flight_requests_then_exits_0(make_handler) -> None:
    """SIGTERM mid slow upload + 2 slow downloads: all complete, new connections refused, exit 0, no Vault left."""
    handler: RunningHandler = make_handler(VAULTFN_EAGER_START="true")
    handler.wait_healthy()
    token = mount_kv(handler)
    big = "b" * 3_000_000
    assert handler.request("PUT", "/v1/kv/big", {"v": big}, token)[0] == 204
    upload = json.dumps({"v": "u" * 1_000_000}).encode()
    (vault_pid,) = handler.vault_pids()

    events = [threading.Event() for _ in range(3)]
    with ThreadPoolExecutor(3) as pool:
        futures = [
            pool.submit(slow_upload, handler, token, upload, events[0]),
            pool.submit(slow_download, handler, token, events[1]),
            pool.submit(slow_download, handler, token, events[2]),
        ]
        assert all(event.wait(10) for event in events)
        time.sleep(0.3)
        handler.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert wait_until(lambda: refused(handler.port), timeout=2), "the handler still accepts connections"
        assert not all(future.done() for future in futures), "nothing was in flight when shutdown began"
        uploaded, *downloads = [future.result() for future in futures]

    assert uploaded.status == 204, uploaded
    for download in downloads:
        assert download.status == 200, download
        assert json.loads(download.body)["data"] == {"v": big}
    handler.process.wait(DRAIN_TIMEOUT + 15)
    assert handler.process.returncode == 0
    assert time.monotonic() - signalled < DRAIN_TIMEOUT + 5
    assert not alive(vault_pid)
    assert "shutting down" in handler.log and "stopped" in handler.log


# -- clients that stall --------------------------------------------------------------------------


def stalled_client(port: int, sent: bytes, trickle: bytes = b"") -> tuple[float, bytes]:
    """Send `sent` (then `trickle` a byte every 0.2 s) and wait for the handler's answer and close."""
    with socket.create_connection(("127.0.0.1", port), timeout=NEVER_HANGS) as connection:
        started = time.monotonic()
        connection.sendall(sent)
        for byte in trickle:
            if select.select([connection], [], [], 0.2)[0]:
                break
            connection.sendall(bytes([byte]))
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
        return time.monotonic() - started, answer


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_stalled_clients_get_408_and_are_disconnected(make_handler) -> None:
    """Slowloris heads, stalled bodies (limit 2 s): 408 and closed in 2-4.5 s (silent: closed); idle keep-alive kept."""
    handler: RunningHandler = make_handler(VAULTFN_EAGER_START="true", VAULTFN_MAX_REQUEST_DURATION="2s")
    handler.wait_healthy()
    token = mount_kv(handler)["X-Vault-Token"]
    pooled = http.client.HTTPConnection("127.0.0.1", handler.port, timeout=NEVER_HANGS)  # as the host's pool
    assert exchange(pooled, "GET", "/v1/sys/health", None, {})[0] == 200
    descriptors = open_descriptors(handler.process.pid)
    head = b"GET /v1/sys/health HTTP/1.1\r\nHost: x\r\n"
    cases = {
        "silent": (b"", b""),
        "partial head": (head, b""),
        "trickled head": (head + b"X-Slow: ", b"a" * 100),
        "partial body to Vault": (
            f"PUT /v1/kv/stalled HTTP/1.1\r\nHost: x\r\nX-Vault-Token: {token}\r\nContent-Length: 100\r\n\r\n".encode()
            + b'{"v": "',
            b"",
        ),
        "partial invocation body": (
            b'POST /keepwarm_timer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"Data"',
            b"",
        ),
    }
    with ThreadPoolExecutor(len(cases)) as pool:
        futures = {name: pool.submit(stalled_client, handler.port, *case) for name, case in cases.items()}
        results = {name: future.result() for name, future in futures.items()}
    for name, (seconds, answer) in results.items():
        assert 2 <= seconds < 4.5, (name, seconds, answer)
        if name == "silent":
            assert answer == b"", name  # nothing to answer: closed
        else:
            assert answer.startswith(b"HTTP/1.1 408 "), (name, answer)
            assert b"Connection: close" in answer and b'{"errors": ["' in answer, (name, answer)
    # Every stalled connection is gone from the handler; an idle keep-alive connection is not stalled.
    assert wait_until(lambda: open_descriptors(handler.process.pid) <= descriptors, timeout=2)
    assert exchange(pooled, "GET", "/v1/sys/health", None, {})[0] == 200
    pooled.close()
    assert handler.request("GET", "/v1/sys/health")[0] == 200
    assert handler.request("POST", "/keepwarm_timer", host_timer_body("keepwarm_timer"), timeout=60)[0] == 200
