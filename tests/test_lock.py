"""The single-writer lock, with real handlers, real OpenBao and a real Azurite.

Every handler here takes the lease on a lock blob in one Azurite container (15 s, the
shortest lease Azure grants) while its Vault runs on its own local data; what the tests
check is who runs a Vault, when, and what clients are told meanwhile.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator

import pytest
from azure.storage.blob import BlobLeaseClient, ContainerClient

from .azurite import Azurite, new_container
from .conftest import RunningHandler, alive, wait_until
from .test_backup import run_command, settings_env

LEASE = 15
LOCK_BLOB = "vaultfn.lock"


@pytest.fixture
def lock_container(azurite: Azurite) -> Iterator[ContainerClient]:
    if not azurite.running:
        azurite.start()
    container = new_container(azurite, "lock")
    yield container
    if not azurite.running:
        azurite.start()
    container.delete_container()


@pytest.fixture
def locked_handler(make_handler, azurite: Azurite, lock_container: ContainerClient) -> Callable[..., RunningHandler]:
    """Start a handler that must hold the lock on `lock_container` to run Vault."""

    def make(**extra: str) -> RunningHandler:
        settings = {
            "VAULTFN_LOCK": "on",
            "VAULTFN_LOCK_CONTAINER": lock_container.container_name,
            "VAULTFN_LOCK_LEASE": f"{LEASE}s",
            "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string,
            "VAULTFN_EAGER_START": "true",
            "VAULTFN_MAX_REQUEST_DURATION": "30s",
        }
        return make_handler(**(settings | extra))

    return make


def lease_state(container: ContainerClient) -> str:
    return container.get_blob_client(LOCK_BLOB).get_blob_properties().lease.state


def running_vault(handler: RunningHandler) -> bool:
    return bool(handler.vault_pids())


def refused(handler: RunningHandler) -> tuple[int, dict[str, str], str]:
    status, headers, body = handler.request("GET", "/v1/sys/health", timeout=10)
    return status, headers, " ".join(json.loads(body)["errors"]) if status == 503 else ""


def test_two_handlers_racing_for_one_lease_run_exactly_one_vault(locked_handler, lock_container) -> None:
    """Two handlers start at once on one container: one runs Vault; the other answers 503 at once, saying why."""
    first, second = locked_handler(), locked_handler()
    assert wait_until(lambda: running_vault(first) or running_vault(second), timeout=30)
    holder, waiter = (first, second) if running_vault(first) else (second, first)
    holder.wait_healthy()
    time.sleep(LEASE / 3 + 1)  # a renewal and a retry later, still exactly one
    assert running_vault(holder) and not running_vault(waiter)
    started = time.monotonic()
    status, headers, errors = refused(waiter)
    assert time.monotonic() - started < 2
    assert status == 503 and 1 <= int(headers["Retry-After"]) <= 5
    assert "another instance holds the single-writer lock" in errors and LOCK_BLOB in errors
    assert lease_state(lock_container) == "leased"
    assert waiter.request("POST", "/unknown_function", b"{}")[0] == 404  # the waiter stays up for the host


def test_graceful_shutdown_releases_and_the_other_takes_over(locked_handler, lock_container) -> None:
    """SIGTERM to the holder: its Vault stops, the lease is released, and the waiting handler serves within seconds."""
    holder = locked_handler()
    holder.wait_healthy()
    waiter = locked_handler()
    assert wait_until(lambda: refused(waiter)[0] == 503, timeout=10)
    assert holder.stop() == 0
    assert "released the single-writer lock" in holder.log
    released = time.monotonic()
    waiter.wait_healthy(timeout=15)
    assert time.monotonic() - released < 8  # the next retry (every 5 s), not the lease's expiry
    assert running_vault(waiter)


def test_after_a_crash_the_next_instance_takes_over_once_the_lease_expires(locked_handler, lock_container) -> None:
    """kill -9 of the holder (its Vault dies with it): the lease expires and the other handler runs Vault."""
    holder = locked_handler()
    holder.wait_healthy()
    (vault_pid,) = holder.vault_pids()
    waiter = locked_handler()
    assert wait_until(lambda: refused(waiter)[0] == 503, timeout=10)
    holder.stop(signal.SIGKILL)
    crashed = time.monotonic()
    assert wait_until(lambda: not alive(vault_pid), timeout=10)
    waiter.wait_healthy(timeout=LEASE + 15)
    assert time.monotonic() - crashed < LEASE + 8


def test_a_lease_taken_by_someone_else_stops_vault_within_one_period(locked_handler, lock_container) -> None:
    """The lease is broken and taken by another writer: the holder stops proxying and Vault, then keeps retrying."""
    holder = locked_handler()
    holder.wait_healthy()
    (vault_pid,) = holder.vault_pids()
    blob = lock_container.get_blob_client(LOCK_BLOB)
    BlobLeaseClient(blob).break_lease(lease_break_period=0)
    intruder = BlobLeaseClient(blob)
    intruder.acquire(lease_duration=LEASE)
    taken = time.monotonic()
    try:
        assert wait_until(lambda: not alive(vault_pid), timeout=LEASE)
        assert time.monotonic() - taken < LEASE / 3 + LEASE / 6 + 2
        status, _, errors = refused(holder)
        assert status == 503 and "single-writer lock" in errors
        assert "the single-writer lock was lost" in holder.log
    finally:
        intruder.release()
    holder.wait_healthy(timeout=15)  # the lock is free again: it takes it back and restarts Vault


def test_storage_down_during_renewal_fences_vault_before_the_lease_expires(
    locked_handler, lock_container, azurite: Azurite
) -> None:
    """Azurite stopped while Vault runs: Vault stops before the lease could expire; once storage is back, it serves."""
    holder = locked_handler()
    holder.wait_healthy()
    (vault_pid,) = holder.vault_pids()
    azurite.stop()
    stopped = time.monotonic()
    try:
        # The last renewal was at most LEASE/3 ago; the lease is ours for LEASE after it, Vault must be gone before.
        assert wait_until(lambda: not alive(vault_pid), timeout=LEASE)
        assert time.monotonic() - stopped < LEASE - 1
        status, headers, errors = refused(holder)
        assert status == 503 and "single-writer lock" in errors  # could not renew it, then cannot take it again
        assert "could not renew the single-writer lock" in holder.log
        assert int(headers["Retry-After"]) >= 1
        assert azurite.connection_string.split("AccountKey=")[1].split(";")[0] not in holder.log
    finally:
        azurite.start()
    holder.wait_healthy(timeout=LEASE + 15)
    assert lease_state(lock_container) == "leased"


def test_a_missing_container_is_named_in_every_503(locked_handler) -> None:
    """The lock container does not exist: no Vault, and each 503 names the container and the fix."""
    handler = locked_handler(VAULTFN_LOCK_CONTAINER="no-such-container")
    assert wait_until(lambda: refused(handler)[0] == 503, timeout=10)
    _, _, errors = refused(handler)
    assert "container no-such-container does not exist" in errors
    assert not running_vault(handler)


def test_backups_leave_the_lock_blob_out_and_restore_refuses_a_locked_container(
    azurite: Azurite, vault_container, tmp_path
) -> None:
    """A leased lock blob in Vault's container: left out of snapshots; restoring into it exits 3 unless --force."""
    source, contents = vault_container
    lock_blob = source.get_blob_client(LOCK_BLOB)
    lock_blob.upload_blob(b"")
    lease = BlobLeaseClient(lock_blob)
    lease.acquire(lease_duration=LEASE)
    try:
        env = settings_env(azurite, source, BACKUP_DIR=str(tmp_path / "repo"))
        taken = run_command(["run", "--json"], env)
        assert taken.returncode == 0, taken.stderr
        snapshot = json.loads(taken.stdout)["id"]
        shown = json.loads(run_command(["show", snapshot, "--json"], env).stdout)
        assert {entry["name"] for entry in shown["entries"]} == set(contents)
        into_live = run_command(["restore", snapshot, "--to-container", source.container_name], env)
        assert into_live.returncode == 3, into_live.stderr
        assert "single-writer lock (blob vaultfn.lock) is held" in into_live.stderr
        assert "stop the function app" in into_live.stderr
    finally:
        lease.release()
    forced = run_command(["restore", snapshot, "--to-container", source.container_name, "--force"], env)
    assert forced.returncode == 0, forced.stderr


def test_a_handler_restarted_on_the_same_instance_takes_its_lease_back_at_once(locked_handler) -> None:
    """kill -9, then a new handler with the same WEBSITE_INSTANCE_ID: it takes the lease back without waiting for it."""
    first = locked_handler(WEBSITE_INSTANCE_ID="instance-a")
    first.wait_healthy()
    first.stop(signal.SIGKILL)
    crashed = time.monotonic()
    second = locked_handler(WEBSITE_INSTANCE_ID="instance-a")
    second.wait_healthy(timeout=LEASE)
    assert time.monotonic() - crashed < LEASE * 2 / 3  # the grace for the old Vault (L/6), not the lease's expiry
    assert "took back this instance's lock from a previous handler" in second.log
