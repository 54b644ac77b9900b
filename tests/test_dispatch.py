"""Host invocations (`POST /<functionName>`) through the real server, with jobs of the test's own.

The handler runs in-process on its own event loop so the test can register
jobs; requests are the ones the Functions host sends (../shared/FACTS.md, 1).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.settings import Settings
from vault_handler.invocations import Invocation, JobResult
from vault_handler.server import Handler

from .conftest import free_port

TIMER_BODY = {
    "Data": {
        "timer": {
            "Schedule": {"AdjustForDST": True},
            "ScheduleStatus": {
                "Last": "2026-12-04T03:00:00Z",
                "Next": "2026-12-05T03:00:00Z",
                "LastUpdated": "2026-12-04T03:00:00Z",
            },
            "IsPastDue": False,
        }
    },
    "Metadata": {"sys": {"MethodName": "echo_timer", "UtcNow": "2026-12-04T03:00:00.01Z", "RandGuid": "0f0e"}},
}


async def echo_timer(invocation: Invocation) -> JobResult:
    timer = invocation.data["timer"]
    return JobResult(
        return_value={"function": invocation.function, "past_due": timer["IsPastDue"]},
        logs=[f"ran at {invocation.metadata['sys']['UtcNow']}"],
    )


async def failing_timer(invocation: Invocation) -> JobResult:
    raise RuntimeError("storage account unreachable")


class InProcessHandler:
    def __init__(self, handler: Handler, port: int) -> None:
        self.handler = handler
        self.port = port

    def post(self, path: str, body: bytes) -> tuple[int, dict]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()


@pytest.fixture
def in_process(tmp_path: Path) -> Iterator[InProcessHandler]:
    port = free_port()
    env = {"VAULTFN_PORT": str(port), "VAULTFN_DATA_DIR": str(tmp_path), "VAULT_BINARY": shutil.which("false")}
    settings = Settings.from_env(env)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, Handler] = {}

    async def serve() -> None:
        handler = Handler(settings, jobs={"echo_timer": echo_timer, "failing_timer": failing_timer})
        holder["handler"] = handler
        await handler.start()
        ready.set()
        await handler._stopped.wait()
        await handler.shutdown()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    yield InProcessHandler(holder["handler"], port)
    loop.call_soon_threadsafe(holder["handler"].stop)
    thread.join(15)
    loop.close()


def test_timer_invocation_returns_the_host_envelope(in_process: InProcessHandler) -> None:
    status, body = in_process.post("/echo_timer", json.dumps(TIMER_BODY).encode())
    assert status == 200
    assert body == {
        "Outputs": {},
        "Logs": ["ran at 2026-12-04T03:00:00.01Z"],
        "ReturnValue": {"function": "echo_timer", "past_due": False},
    }


def test_first_run_with_null_schedule_status(in_process: InProcessHandler) -> None:
    first = json.loads(json.dumps(TIMER_BODY))
    first["Data"]["timer"]["ScheduleStatus"] = None
    assert in_process.post("/echo_timer", json.dumps(first).encode())[0] == 200


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"Data": [], "Metadata": {}}', "must be JSON objects"),
    ],
)
def test_malformed_payloads_get_400(in_process: InProcessHandler, body: bytes, message: str) -> None:
    status, answer = in_process.post("/echo_timer", body)
    assert status == 400
    assert message in answer["error"]
    assert answer["Logs"] == [answer["error"]]


def test_unknown_function_gets_404_naming_the_known_ones(in_process: InProcessHandler) -> None:
    status, answer = in_process.post("/keepwarm", json.dumps(TIMER_BODY).encode())
    assert status == 404
    assert answer["error"] == "no function named 'keepwarm' (known: echo_timer, failing_timer)"


def test_failing_job_fails_the_invocation_and_the_handler_stays_up(in_process: InProcessHandler) -> None:
    status, answer = in_process.post("/failing_timer", json.dumps(TIMER_BODY).encode())
    assert status == 500
    assert answer["Logs"] == ["failing_timer failed: storage account unreachable"]
    assert in_process.post("/echo_timer", json.dumps(TIMER_BODY).encode())[0] == 200


def test_invocations_never_start_vault(in_process: InProcessHandler) -> None:
    for _ in range(3):
        in_process.post("/echo_timer", json.dumps(TIMER_BODY).encode())
    assert in_process.handler.supervisor._task is None
    assert not in_process.handler.supervisor.ready


def test_oversized_invocation_payload_gets_413(in_process: InProcessHandler) -> None:
    head = b"POST /echo_timer HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n"
    with socket.create_connection(("127.0.0.1", in_process.port), timeout=10) as connection:
        connection.sendall(head)
        answer = connection.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"1 MiB" in answer
