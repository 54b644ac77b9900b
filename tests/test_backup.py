"""backup_timer against real Azurite (blob source, container and directory repositories)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from azure.storage.blob import ContainerClient

from backup_timer import restore, stores
from backup_timer.azure import ConfigurationError, destination_store
from backup_timer.backup import BackupRefused, RunResult
from backup_timer.commands import backup, open_repository
from backup_timer.prune import prune
from backup_timer.repository import Manifest, Repository
from backup_timer.retention import Policy
from backup_timer.verify import verify
from shared.settings import BackupSettings, Settings

from .azurite import Azurite, change_blobs, fill_like_vault, new_container, read_all
from .conftest import REPO, free_port, handler_env


def settings_for(azurite: Azurite, source: ContainerClient, **extra: str) -> BackupSettings:
    env = {
        "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string,
        "AZURE_BLOB_CONTAINER": source.container_name,
        "BACKUP_STORAGE_RETRIES": "0",
        **extra,
    }
    return Settings.from_env(env).backup


def container_repo(azurite: Azurite, source: ContainerClient) -> BackupSettings:
    name = new_container(azurite, "repo").container_name
    return settings_for(azurite, source, BACKUP_CONNECTION_STRING=azurite.connection_string, BACKUP_CONTAINER=name)


def take(settings: BackupSettings, progress=None) -> RunResult:
    return backup(settings, open_repository(settings), progress)


def test_full_then_unchanged_then_k_changes(azurite: Azurite, vault_container) -> None:
    source, contents = vault_container
    settings = container_repo(azurite, source)
    full = take(settings)
    assert (full.manifest.copied, full.manifest.reused, full.manifest.converged) == (1000, 0, True)
    assert {e.name for e in full.manifest.entries} == set(contents)
    assert full.manifest.bytes == sum(len(v) for v in contents.values())
    unchanged = take(settings)
    assert (unchanged.manifest.copied, unchanged.manifest.reused, unchanged.manifest.copied_bytes) == (0, 1000, 0)
    changed = sorted(contents)[100:107]
    change_blobs(source, changed, seed=7)
    incremental = take(settings)
    assert (incremental.manifest.copied, incremental.manifest.reused) == (7, 993)
    repository = open_repository(settings)
    assert repository.snapshot_ids() == [full.manifest.id, unchanged.manifest.id, incremental.manifest.id]
    assert verify(repository, repository.manifests()).ok


def test_restore_is_byte_identical_and_refuses_a_non_empty_target(azurite: Azurite, vault_container) -> None:
    source, _ = vault_container
    settings = container_repo(azurite, source)
    change_blobs(source, ["core/keyring"], seed=3)
    snapshot = take(settings).manifest
    expected = read_all(source)
    repository = open_repository(settings)
    target = new_container(azurite, "restored")
    target.delete_container()  # restore creates it
    result = restore.to_container(repository, snapshot, target)
    assert result.objects == 1000 and "AZURE_BLOB_CONTAINER=" + target.container_name in result.next_steps
    assert read_all(target) == expected
    with pytest.raises(restore.RestoreError, match="is not empty"):
        restore.to_container(repository, snapshot, target)


def test_forced_restore_writes_into_a_non_empty_container(azurite: Azurite, tmp_path: Path) -> None:
    source = new_container(azurite, "small")
    contents = fill_like_vault(source, 40)
    settings = settings_for(azurite, source, BACKUP_DIR=str(tmp_path / "repo"))
    snapshot = take(settings).manifest
    target = new_container(azurite, "occupied")
    target.get_blob_client("leftover").upload_blob(b"old")
    result = restore.to_container(open_repository(settings), snapshot, target, force=True)
    assert result.objects == 40
    assert read_all(target) == {**contents, "leftover": b"old"}


def test_directory_repository_round_trip(azurite: Azurite, vault_container, tmp_path: Path) -> None:
    source, contents = vault_container
    settings = settings_for(azurite, source, BACKUP_DIR=str(tmp_path / "repo"))
    first = take(settings)
    assert first.manifest.copied == 1000
    assert take(settings).manifest.copied == 0
    repository = open_repository(settings)
    restore.to_directory(repository, first.manifest, tmp_path / "out")
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert {p.relative_to(tmp_path / "out").as_posix(): p.read_bytes() for p in files} == contents
    with pytest.raises(restore.RestoreError, match="not empty"):
        restore.to_directory(repository, first.manifest, tmp_path / "out")


def test_changes_during_the_run_are_chased_until_converged(azurite: Azurite, vault_container) -> None:
    source, _ = vault_container
    settings = container_repo(azurite, source)
    moved = ["core/keyring", "core/mounts", "sys/policy/default"]
    once = threading.Event()

    def writer(_: int) -> None:
        if not once.is_set():
            once.set()
            change_blobs(source, moved, seed=11)  # Vault writes while the first pass copies

    result = take(settings, writer)
    assert result.manifest.converged is True and result.manifest.passes == 2
    # A moved blob copied before the write is copied again; one not yet copied is copied once, later.
    assert 1000 <= result.manifest.copied <= 1000 + len(moved)
    restored = new_container(azurite, "chased")
    restored.delete_container()
    restore.to_container(open_repository(settings), result.manifest, restored)
    assert read_all(restored) == read_all(source)


def test_a_run_that_cannot_catch_up_says_so(azurite: Azurite, vault_container) -> None:
    source, _ = vault_container
    settings = container_repo(azurite, source)
    settings = BackupSettings(**{**settings.__dict__, "max_passes": 1})
    once = threading.Event()

    def writer(_: int) -> None:
        if not once.is_set():
            once.set()
            change_blobs(source, ["core/keyring"], seed=5)

    result = take(settings, writer)
    assert result.manifest.converged is False and result.manifest.passes == 1
    committed = open_repository(settings).load(result.manifest.id)
    assert committed.converged is False
    assert verify(open_repository(settings), [committed]).ok  # each entry is still a consistent blob version


def test_a_busy_writer_never_corrupts_the_snapshot(azurite: Azurite, vault_container) -> None:
    source, contents = vault_container
    settings = container_repo(azurite, source)
    stop = threading.Event()
    names = sorted(contents)[:50]

    def keep_writing() -> None:
        seed = 0
        while not stop.is_set():
            seed += 1
            change_blobs(source, names[seed % 50 : seed % 50 + 3], seed=seed)

    thread = threading.Thread(target=keep_writing)
    thread.start()
    try:
        result = take(settings)
    finally:
        stop.set()
        thread.join()
    manifest = result.manifest
    assert manifest.converged or manifest.passes == settings.max_passes
    assert verify(open_repository(settings), [manifest]).ok


@pytest.mark.parametrize("kind", ["empty", "not-vault"])
def test_an_empty_or_foreign_container_is_refused_and_nothing_committed(azurite: Azurite, kind: str, tmp_path) -> None:
    source = new_container(azurite, kind)
    if kind == "not-vault":
        source.get_blob_client("images/cat.png").upload_blob(b"meow")
    settings = settings_for(azurite, source, BACKUP_DIR=str(tmp_path / "repo"))
    with pytest.raises(BackupRefused, match="is not Vault's storage") as refusal:
        take(settings)
    assert ("it is empty" in str(refusal.value)) is (kind == "empty")
    assert open_repository(settings).snapshot_ids() == []


def test_prune_keeps_objects_shared_with_kept_snapshots(azurite: Azurite, vault_container) -> None:
    source, contents = vault_container
    settings = container_repo(azurite, source)
    take(settings)
    change_blobs(source, sorted(contents)[:10], seed=1)
    take(settings)
    change_blobs(source, sorted(contents)[10:20], seed=2)
    newest = take(settings).manifest
    repository = open_repository(settings)
    result = prune(repository, Policy(last=1, hourly=0, daily=0, weekly=0, monthly=0))
    assert result.kept == [newest.id] and len(result.forgotten) == 2
    assert result.objects_deleted == 20  # the old versions of the 20 changed blobs, and nothing else
    assert verify(repository, repository.manifests()).ok
    target = new_container(azurite, "after-prune")
    target.delete_container()
    restore.to_container(repository, newest, target)
    assert read_all(target) == read_all(source)


def test_retention_on_synthetic_dates_through_a_real_repository(tmp_path: Path) -> None:
    repository = Repository(stores.DirStore(tmp_path))
    repository.initialize()
    start = datetime(2026, 10, 1, 3, 0, tzinfo=UTC)
    for day in range(40):
        moment = start + timedelta(days=day)
        manifest = Manifest(moment.strftime("%Y%m%dT%H%M%SZ"), moment.isoformat().replace("+00:00", "Z"), {}, [])
        repository.store.write(f"snapshots/{manifest.id}.json", json.dumps(manifest.as_dict()).encode())
    result = prune(repository, Policy(last=2, hourly=0, daily=5, weekly=2, monthly=2))
    kept = sorted(result.kept)
    assert kept == sorted(repository.snapshot_ids())
    # last 2: Nov 9, 8; daily 5: Nov 5-9; weekly 2 (ISO weeks 46, 45): Nov 9, Nov 8; monthly 2: Nov 9, Oct 31
    assert kept == ["20261031T030000Z"] + [f"202611{d:02d}T030000Z" for d in (5, 6, 7, 8, 9)]


def test_verify_finds_corrupted_and_missing_objects(azurite: Azurite, vault_container, tmp_path: Path) -> None:
    source, _ = vault_container
    settings = settings_for(azurite, source, BACKUP_DIR=str(tmp_path / "repo"))
    manifest = take(settings).manifest
    entries = {e.name: e for e in manifest.entries}
    corrupted, missing = entries["core/keyring"], entries["core/seal-config"]
    (tmp_path / "repo" / corrupted.object).write_bytes(b"bit rot")
    (tmp_path / "repo" / missing.object).unlink()
    result = verify(open_repository(settings), [manifest])
    problems = {p.names: p.reason for p in result.problems}
    assert problems == {("core/keyring",): f"size 7 instead of {corrupted.size}", ("core/seal-config",): "missing"}
    sampled = verify(open_repository(settings), [manifest], sample=10)
    assert sampled.objects == 10 and sampled.sampled
    command = run_command(["verify", "--json"], settings_env(azurite, source, BACKUP_DIR=str(tmp_path / "repo")))
    assert command.returncode == 1 and not json.loads(command.stdout)["ok"]


def test_one_run_at_a_time(azurite: Azurite, vault_container, tmp_path: Path) -> None:
    source, _ = vault_container
    for settings in (container_repo(azurite, source), settings_for(azurite, source, BACKUP_DIR=str(tmp_path / "r"))):
        repository = open_repository(settings)
        repository.initialize()
        held = repository.lock("someone else")
        try:
            with pytest.raises(stores.LockHeld, match="try again later"):
                take(settings)
        finally:
            held.release()
        assert take(settings).manifest.copied == 1000  # released: the next run goes


def test_a_crashed_runs_directory_lock_expires(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stores, "LOCK_TTL", 1)
    store = stores.DirStore(tmp_path)
    store.lock("crashed run")  # never released, as if the process died
    with pytest.raises(stores.LockHeld):
        store.lock("next run")
    time.sleep(1.2)
    store.lock("next run").release()


def test_storage_stopping_mid_run_commits_nothing_and_the_next_run_succeeds(
    azurite: Azurite, vault_container, tmp_path: Path
) -> None:
    source, _ = vault_container
    settings = settings_for(azurite, source, BACKUP_DIR=str(tmp_path / "repo"))

    def outage(_: int) -> None:
        if azurite.running and (tmp_path / "repo" / "objects").exists():
            azurite.stop()

    try:
        with pytest.raises(Exception):  # noqa: B017 - whatever the SDK raises for a dead endpoint
            take(settings, outage)
    finally:
        azurite.restart()
    assert open_repository(settings).snapshot_ids() == []
    result = take(settings)
    assert result.manifest.converged and len(result.manifest.entries) == 1000
    assert verify(open_repository(settings), [result.manifest]).ok


def settings_env(azurite: Azurite, source: ContainerClient, **extra: str) -> dict[str, str]:
    env = handler_env(free_port(), Path("/nonexistent"))
    env.update(
        AZURE_STORAGE_CONNECTION_STRING=azurite.connection_string,
        AZURE_BLOB_CONTAINER=source.container_name,
        BACKUP_STORAGE_RETRIES="0",
        **extra,
    )
    return env


def run_command(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "backup_timer", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def test_command_run_list_show_and_exit_codes(azurite: Azurite, vault_container, tmp_path: Path) -> None:
    source, _ = vault_container
    env = settings_env(azurite, source, BACKUP_DIR=str(tmp_path / "repo"))
    first = run_command(["run", "--json"], env)
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert {"id", "copied", "reused", "bytes", "converged"} <= summary.keys() and summary["copied"] == 1000
    listed = json.loads(run_command(["list", "--json"], env).stdout)
    assert [(s["id"], s["entries"]) for s in listed] == [(summary["id"], 1000)]
    assert {"id", "time", "entries", "bytes"} <= listed[0].keys()
    shown = json.loads(run_command(["show", summary["id"], "--json"], env).stdout)
    assert len(shown["entries"]) == 1000 and shown["converged"] is True
    missing = run_command(["show", "19990101T000000Z"], env)
    assert missing.returncode == 1 and "no snapshot" in missing.stderr
    traversal = run_command(["show", "../config"], env)
    assert traversal.returncode == 1 and "not a snapshot id" in traversal.stderr
    assert run_command(["restore", summary["id"], "--to-dir", str(tmp_path / "out"), "--json"], env).returncode == 0
    assert run_command(["frobnicate"], env).returncode == 2
    unconfigured = settings_env(azurite, source, BACKUP_KEEP_DAILY="many")
    assert run_command(["list"], unconfigured).returncode == 2
    assert azurite.connection_string not in first.stdout + first.stderr


def test_timer_invocation_runs_backup_prune_and_verify(azurite: Azurite, vault_container, make_handler) -> None:
    source, _ = vault_container
    repo_name = new_container(azurite, "timer").container_name
    handler = make_handler(
        AZURE_STORAGE_CONNECTION_STRING=azurite.connection_string,
        AZURE_BLOB_CONTAINER=source.container_name,
        BACKUP_CONNECTION_STRING=azurite.connection_string,
        BACKUP_CONTAINER=repo_name,
    )
    body = json.dumps({"Data": {"timer": {"ScheduleStatus": None, "IsPastDue": False}}, "Metadata": {}}).encode()
    status, _, answer = handler.request("POST", "/backup_timer", body, timeout=120)
    assert status == 200, answer
    summary = json.loads(answer)["ReturnValue"]
    assert summary["copied"] == 1000 and summary["converged"] and summary["verify_ok"]
    assert summary["verified"] == 20
    status, _, answer = handler.request("POST", "/backup_timer", body, timeout=120)
    assert json.loads(answer)["ReturnValue"]["copied"] == 0
    assert handler.vault_pids() == []  # a backup of blob storage never starts Vault here
    assert azurite.connection_string not in handler.log


def test_no_destination_is_a_clear_configuration_error() -> None:
    settings = Settings.from_env(
        {"FUNCTIONS_CUSTOMHANDLER_PORT": "7071", "VAULT_CONFIG_TEMPLATE": str(REPO / "config/local.hcl.tpl")}
    )
    with pytest.raises(ConfigurationError, match="no backup destination: set BACKUP_CONTAINER"):
        destination_store(settings.backup)
