"""First-start setup of the local OpenBao (`make run`, tests): seal key and init.

Only used with the embedded local template. The recovery keys and root token
go to `<data dir>/init.json` (0600) and are never printed or logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("vaultfn.bootstrap")

SEAL_KEY_FILE = "seal.key"
INIT_FILE = "init.json"
BACKUP_TOKEN_FILE = "backup-token"
BACKUP_POLICY_NAME = "vaultfn-backup"
# The least a raft backup needs (README, Backups). The default policy lets the token renew itself.
BACKUP_POLICY = 'path "sys/storage/raft/snapshot" {\n  capabilities = ["read", "sudo"]\n}\n'


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
        write_private_file(key, os.urandom(32))
    return key


def _call(port: int, method: str, path: str, body: dict | None, token: str | None) -> tuple[int, Any]:
    import http.client  # noqa: PLC0415 - only needed once, at first start

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        connection.request(method, path, body=payload, headers={"X-Vault-Token": token} if token else {})
        response = connection.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw else None
    finally:
        connection.close()


async def vault_call(
    port: int, method: str, path: str, body: dict | None = None, token: str | None = None
) -> tuple[int, Any]:
    return await asyncio.to_thread(_call, port, method, path, body, token)


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
            await _ensure_backup_token(port, data_dir)
            return
        if time.monotonic() > deadline:
            raise BootstrapError(f"OpenBao did not become active within {timeout:g}s (health: HTTP {code})")
        await asyncio.sleep(0.005)  # a lazy first request waits on this: poll tightly


async def _ensure_backup_token(port: int, data_dir: Path) -> None:
    """A token that can only take raft snapshots, for the local backup timer (`make run`)."""
    token_file = data_dir / BACKUP_TOKEN_FILE
    init_file = data_dir / INIT_FILE
    if token_file.exists() or not init_file.exists():
        return
    root = json.loads(init_file.read_text()).get("root_token")
    code, answer = await vault_call(
        port, "PUT", f"/v1/sys/policies/acl/{BACKUP_POLICY_NAME}", {"policy": BACKUP_POLICY}, root
    )
    if code not in (200, 204):
        raise BootstrapError(f"creating the {BACKUP_POLICY_NAME} policy failed with HTTP {code}: {answer}")
    request = {"policies": [BACKUP_POLICY_NAME], "period": "768h", "display_name": "vaultfn-backup"}
    code, answer = await vault_call(port, "POST", "/v1/auth/token/create-orphan", request, root)
    if code != 200:
        raise BootstrapError(f"creating the backup token failed with HTTP {code}")
    write_private_file(token_file, answer["auth"]["client_token"].encode())
    log.info("created a raft-snapshot-only token for local backups in %s", token_file)
