"""Bad input to the real handler process: each gets a clear error and the handler stays up.

Requests go to the shared handler (real OpenBao behind it) as raw bytes, the way a
hostile or broken client would send them; settings and templates that cannot work stop
a fresh handler at start with exit code 2 and one line naming the problem.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from .conftest import RunningHandler, wait_until
from .test_lifecycle import run_handler_expecting_exit
from .test_proxy import raw_exchange

CLOSE = b"Connection: close\r\n"


def head(request_line: bytes, *fields: bytes, body: bytes = b"") -> bytes:
    return request_line + b"\r\nHost: vault\r\n" + b"".join(f + b"\r\n" for f in fields) + CLOSE + b"\r\n" + body


def invocation(function: str, body: bytes) -> bytes:
    return head(f"POST /{function} HTTP/1.1".encode(), b"Content-Length: %d" % len(body), body=body)


def status_and_error(answer: bytes) -> tuple[int, str]:
    status_line, _, rest = answer.partition(b"\r\n")
    body = json.loads(rest.partition(b"\r\n\r\n")[2] or b"{}")
    error = body.get("error") or " ".join(body.get("errors", []))
    return int(status_line.split()[1]), error


HEALTH = b"GET /v1/sys/health HTTP/1.1"
TIMER_WRONG_TYPES = [
    (b'{"Data": {"timer": "yesterday"}, "Metadata": {}}', "Data.timer must be the host's TimerInfo"),
    (b'{"Data": {"timer": {"IsPastDue": "no"}}, "Metadata": {}}', "boolean IsPastDue"),
    (b'{"Data": {"timer": {"ScheduleStatus": [1]}}, "Metadata": {}}', "ScheduleStatus null or an object"),
]

CASES = [
    pytest.param(
        head(b"POST /v1/sys/health HTTP/1.1", b"Content-Length: 4", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"),
        400,
        "Transfer-Encoding with Content-Length",
        id="smuggling-cl-and-te",
    ),
    pytest.param(
        head(b"POST /v1/sys/health HTTP/1.1", b"Content-Length: 1", b"Content-Length: 2", body=b"ab"),
        400,
        "more than one Content-Length",
        id="smuggling-two-lengths",
    ),
    pytest.param(
        head(b"POST /v1/sys/health HTTP/1.1", b"Transfer-Encoding: gzip, chunked", body=b"0\r\n\r\n"),
        501,
        "only a single 'Transfer-Encoding: chunked'",
        id="smuggling-te-list",
    ),
    pytest.param(
        head(b"POST /v1/sys/health HTTP/1.1", b"Content-Length: -1"), 400, "invalid Content-Length", id="negative-cl"
    ),
    pytest.param(head(HEALTH, b"X-Big: " + b"a" * 70_000), 431, "64 KiB", id="oversized-header"),
    pytest.param(head(HEALTH, *[b"X-A: 1"] * 150), 431, "more than 100 header fields", id="too-many-headers"),
    pytest.param(head(HEALTH, b"X-A: caf\xe9\xff"), 400, "'X-A' is not valid UTF-8", id="non-utf8-value"),
    pytest.param(head(HEALTH, b"X-\xe9: 1"), 400, "invalid header field name", id="non-utf8-name"),
    pytest.param(head(b"GET /v1/sys/h\xe9alth HTTP/1.1"), 400, "absolute path", id="non-utf8-target"),
    pytest.param(head(HEALTH, b"X-A: a\x00b"), 400, "invalid character in header field 'X-A'", id="nul-in-value"),
    pytest.param(head(HEALTH, b"X-A: 1", b" folded"), 400, "obsolete line folding", id="obs-fold"),
    pytest.param(b"GET /v1/sys/health HTTP/1.1\nHost: x\n\n", 400, "bare CR or LF", id="bare-lf"),
    pytest.param(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, "only HTTP/1.0 and HTTP/1.1", id="http2-preface"),
    pytest.param(invocation("keepwarm_timer", b"{not json"), 400, "not JSON", id="invocation-not-json"),
    pytest.param(invocation("keepwarm_timer", b"[1, 2]"), 400, "must be a JSON object", id="invocation-array"),
    pytest.param(
        invocation("keepwarm_timer", b'{"Data": [], "Metadata": {}}'), 400, "must be JSON objects", id="data-list"
    ),
    *[
        pytest.param(invocation("backup_timer", body), 400, message, id=f"timer-wrong-type-{n}")
        for n, (body, message) in enumerate(TIMER_WRONG_TYPES)
    ],
    pytest.param(
        head(b"POST /backup_timer HTTP/1.1", b"Content-Length: 2000000"), 413, "1 MiB", id="invocation-oversized"
    ),
    pytest.param(
        invocation("restore_timer", b"{}"), 404, "no function named 'restore_timer' (known:", id="unknown-function"
    ),
    pytest.param(invocation("../keepwarm_timer", b"{}"), 404, "no route for POST", id="function-path-trick"),
]


@pytest.mark.parametrize(("raw", "status", "message"), CASES)
def test_bad_requests_get_a_clear_error_and_the_handler_stays_up(
    vault: RunningHandler, raw: bytes, status: int, message: str
) -> None:
    """Smuggling, oversized/non-UTF-8 heads, malformed/wrongly typed/oversized invocations: 4xx/5xx naming the fault."""
    answer = raw_exchange(vault.port, raw)
    assert len(re.findall(rb"(?:^|\r\n)HTTP/1\.1 \d{3} ", answer)) == 1, answer[:500]  # one answer, then closed
    answered, error = status_and_error(answer)
    assert (answered, message in error) == (status, True), error
    assert vault.request("GET", "/v1/sys/health")[0] == 200
    assert vault.process.poll() is None


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ('ui = {{ env "A" \n', "broken.hcl.tpl:1"),
        ('ui = "{{ shell "rm -rf /" }}"\n', "unknown function 'shell'"),
        ('ui = "{{ env }}"\n', "broken.hcl.tpl:1"),
    ],
    ids=["unclosed-action", "unknown-function", "missing-argument"],
)
def test_broken_templates_stop_the_handler_at_start(tmp_path: Path, template: str, message: str) -> None:
    """Template syntax errors and unknown functions: exit 2 at start, one line with file:line and the reason."""
    path = tmp_path / "broken.hcl.tpl"
    path.write_text(template)
    done = run_handler_expecting_exit(tmp_path, VAULT_CONFIG_TEMPLATE=str(path))
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"KEEPWARM_SCHEDULE": "every five minutes"}, "keepwarm_timer: schedule 'every five minutes' is not a six"),
        ({"BACKUP_SCHEDULE": "0 0 3 * *"}, "backup_timer: schedule '0 0 3 * *' is not a six-field"),
        ({"VAULTFN_LOCK": "on"}, "VAULTFN_LOCK: is on but names no container"),
        ({"VAULTFN_LOCK_LEASE": "5m", "VAULTFN_LOCK": "on"}, "VAULTFN_LOCK"),
        ({"VAULTFN_MAX_REQUEST_DURATION": "soon"}, "VAULTFN_MAX_REQUEST_DURATION: 'soon' is not a duration"),
    ],
    ids=["keepwarm-schedule", "backup-schedule", "lock-without-container", "lock-lease", "duration"],
)
def test_invalid_settings_stop_the_handler_at_start(tmp_path: Path, settings: dict[str, str], message: str) -> None:
    """Invalid schedules and settings: exit 2 at start with one line naming the setting or function and the fix."""
    done = run_handler_expecting_exit(tmp_path, **settings)
    assert done.returncode == 2
    assert message in done.stderr.strip().splitlines()[-1]


def test_an_invalid_lock_connection_string_is_named_in_each_503_and_never_echoed(make_handler) -> None:
    """A connection string whose key is not base64: no Vault, each 503 says which setting is wrong, never its value."""
    key = "not-base64-secret-key!!"
    handler: RunningHandler = make_handler(
        VAULTFN_LOCK="on",
        AZURE_BLOB_CONTAINER="vault",
        AZURE_STORAGE_CONNECTION_STRING=f"AccountName=acct;AccountKey={key};BlobEndpoint=http://127.0.0.1:1/acct",
    )
    for _ in range(2):
        status, headers, body = handler.request("GET", "/v1/sys/health", timeout=10)
        assert status == 503 and int(headers["Retry-After"]) >= 1
        (error,) = json.loads(body)["errors"]
        assert "AccountKey is not base64" in error and key not in error
    assert wait_until(lambda: "AccountKey is not base64" in handler.log)
    assert key not in handler.log
    assert handler.vault_pids() == []
