"""Raft snapshots of a real OpenBao: backup, a fresh server, restore, the secret reads back."""

from __future__ import annotations

import http.server
import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backup_timer import restore
from backup_timer.backup import BackupRefused
from backup_timer.commands import backup, open_repository
from shared.settings import BackupSettings, Settings

from .conftest import RunningHandler, token_header


def raft_settings(address: str, data_dir: Path, repository: Path) -> BackupSettings:
    env = {"VAULTFN_DATA_DIR": str(data_dir), "BACKUP_DIR": str(repository), "BACKUP_VAULT_ADDR": address}
    settings = Settings.from_env(env).backup
    assert settings.source == "raft"
    return settings


def test_raft_backup_then_restore_into_a_fresh_server(vault: RunningHandler, make_handler, tmp_path: Path) -> None:
    headers = token_header(vault)
    assert vault.request("POST", "/v1/secret/data/raft-proof", {"data": {"v": "survives"}}, headers)[0] == 200
    settings = raft_settings(vault.url, vault.data_dir, tmp_path / "repo")
    result = backup(settings, open_repository(settings))
    (entry,) = result.manifest.entries
    assert (
        entry.name == "raft.snap"
        and entry.size > 1000
        and result.manifest.source
        == {
            "kind": "raft",
            "address": vault.url,
        }
    )
    snapshot = open_repository(settings).load(result.manifest.id)

    fresh_dir = tmp_path / "fresh"
    fresh_dir.mkdir()
    # A new deployment unseals with the same key (on Azure: the same Key Vault key).
    shutil.copy(vault.data_dir / "seal.key", fresh_dir / "seal.key")
    fresh: RunningHandler = make_handler(VAULTFN_EAGER_START="true", data_dir=fresh_dir)
    fresh.wait_healthy()
    assert fresh.request("GET", "/v1/secret/data/raft-proof", headers=headers)[0] == 403  # not restored yet
    # OpenBao accepts a plain `snapshot` restore here because both clusters share the seal key;
    # `--force` (snapshot-force) is for a cluster whose keys differ.
    outcome = restore.to_vault(open_repository(settings), snapshot, fresh.url, fresh.root_token)
    assert outcome.next_steps == "Vault restored the snapshot."
    deadline = time.monotonic() + 60
    status, body = 0, b""
    while time.monotonic() < deadline:
        status, _, body = fresh.request("GET", "/v1/secret/data/raft-proof", headers=headers)
        if status == 200:
            break
        time.sleep(0.2)
    assert status == 200, body
    assert json.loads(body)["data"]["data"] == {"v": "survives"}


def test_raft_snapshot_to_a_file_is_verified(vault: RunningHandler, tmp_path: Path) -> None:
    settings = raft_settings(vault.url, vault.data_dir, tmp_path / "repo")
    manifest = backup(settings, open_repository(settings)).manifest
    target = tmp_path / "out.snap"
    restore.to_file(open_repository(settings), manifest, target)
    assert target.stat().st_size == manifest.entries[0].size
    with pytest.raises(restore.RestoreError, match="exists"):
        restore.to_file(open_repository(settings), manifest, target)


def test_a_token_without_the_policy_is_refused_clearly(vault: RunningHandler, tmp_path: Path) -> None:
    env = {
        "VAULTFN_BACKUP_TOKEN": "s.not-a-real-token",
        "BACKUP_DIR": str(tmp_path / "repo"),
        "BACKUP_VAULT_ADDR": vault.url,
    }
    settings = Settings.from_env(env).backup
    with pytest.raises(BackupRefused, match="HTTP 403"):
        backup(settings, open_repository(settings))
    assert open_repository(settings).snapshot_ids() == []


@pytest.fixture
def fake_vault() -> Iterator[tuple[str, dict]]:
    answer = {"body": b""}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(answer["body"])))
            self.end_headers()
            self.wfile.write(answer["body"])

        def do_POST(self) -> None:  # token renewal
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", answer
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(("body", "message"), [(b"", "empty raft snapshot"), (b"not gzip", "not a valid archive")])
def test_empty_or_broken_raft_snapshots_are_refused(fake_vault, tmp_path: Path, body: bytes, message: str) -> None:
    address, answer = fake_vault
    answer["body"] = body
    env = {"VAULTFN_BACKUP_TOKEN": "t", "BACKUP_DIR": str(tmp_path / "repo"), "BACKUP_VAULT_ADDR": address}
    settings = Settings.from_env(env).backup
    with pytest.raises(BackupRefused, match=message):
        backup(settings, open_repository(settings))
    assert open_repository(settings).snapshot_ids() == []
