"""First-start setup of the local OpenBao (`make run`, tests): seal key and init.

Only used with the embedded local template. The recovery keys and root token
go to `<data dir>/init.json` (0600) and are never printed or logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("vaultfn.bootstrap")

SEAL_KEY_FILE = "seal.key"
INIT_FILE = "init.json"


class BootstrapError(RuntimeError):
    pass


def write_private_file(path: Path, data: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)


def prepare_data_dir(data_dir: Path) -> Path:
    """Create the data dir and the static seal key; return the key's path."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = data_dir / SEAL_KEY_FILE
    if not key.exists():
        if (data_dir / "raft").exists():
            raise BootstrapError(
                f"{data_dir / 'raft'} exists but its seal key {key} is missing: the data cannot be unsealed; "
                "restore the key, or delete the data dir to start afresh"
            )
        write_private_file(key, secrets.token_bytes(32))
    return key


def _call(port: int, method: str, path: str, body: dict | None) -> tuple[int, Any]:
    import http.client  # noqa: PLC0415 - only needed once, at first start

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        connection.request(method, path, body=payload, headers={"X-Forwarded-For": "127.0.0.1"})
        response = connection.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw else None
    finally:
        connection.close()


async def vault_call(port: int, method: str, path: str, body: dict | None = None) -> tuple[int, Any]:
    return await asyncio.to_thread(_call, port, method, path, body)


async def initialize(port: int, data_dir: Path, timeout: float = 60.0) -> None:
    """Initialize the local OpenBao if needed, then wait until it is active."""
    _, status = await vault_call(port, "GET", "/v1/sys/init")
    if not status.get("initialized"):
        init_file = data_dir / INIT_FILE
        if init_file.exists():
            stale = init_file.with_name(f"{INIT_FILE}.{int(time.time())}.stale")
            init_file.rename(stale)
            log.warning("OpenBao's storage is empty but %s existed; kept it as %s", init_file, stale)
        code, keys = await vault_call(port, "PUT", "/v1/sys/init", {"recovery_shares": 1, "recovery_threshold": 1})
        if code != 200:
            raise BootstrapError(f"initializing OpenBao failed with HTTP {code}: {(keys or {}).get('errors')}")
        write_private_file(init_file, json.dumps(keys, indent=2).encode())
        log.info("initialized OpenBao; the root token and recovery key are in %s", init_file)
    deadline = time.monotonic() + timeout
    while True:
        code, _ = await vault_call(port, "GET", "/v1/sys/health")
        if code == 200:
            return
        if time.monotonic() > deadline:
            raise BootstrapError(f"OpenBao did not become active within {timeout:g}s (health: HTTP {code})")
        await asyncio.sleep(0.005)  # a lazy first request waits on this: poll tightly
