"""The Azurite fixtures themselves: Vault-like content, service-side MD5, restart keeps data."""

from __future__ import annotations

import hashlib

from .azurite import (
    CORE_BLOBS,
    ODD_SECRET_PATHS,
    Azurite,
    change_blobs,
    fill_like_vault,
    new_container,
    read_all,
    vault_blob_names,
)


def test_vault_container_is_laid_out_like_vault(vault_container):
    container, contents = vault_container
    names = [blob.name for blob in container.list_blobs()]
    assert len(names) == len(contents) == 1000
    assert set(names) == set(contents)
    assert set(CORE_BLOBS) <= set(names)
    assert "sys/policy/default" in names
    for prefix in ("sys/token/id/h", "sys/token/accessor/", "logical/", "auth/"):
        assert sum(name.startswith(prefix) for name in names) >= 10, prefix
    assert all(50 <= len(value) <= 2000 for value in contents.values())
    # Names that need URL-encoding survive the round trip.
    assert {path for path in ODD_SECRET_PATHS if any(name.endswith(path) for name in names)} == set(ODD_SECRET_PATHS)


def test_fill_is_deterministic():
    assert vault_blob_names(1000, seed=0) == vault_blob_names(1000, seed=0)
    assert vault_blob_names(1000, seed=0) != vault_blob_names(1000, seed=1)
    assert len(set(vault_blob_names(5000, seed=3))) == 5000
    assert vault_blob_names(5) == list(CORE_BLOBS[:5])


def test_every_blob_has_the_service_computed_md5(vault_container):
    container, contents = vault_container
    listed = 0
    for blob in container.list_blobs():
        md5 = blob.content_settings.content_md5
        assert md5 is not None, blob.name
        assert bytes(md5) == hashlib.md5(contents[blob.name]).digest(), blob.name
        assert blob.size == len(contents[blob.name])
        listed += 1
    assert listed == len(contents)
    assert read_all(container) == contents


def test_change_blobs_overwrites_only_those(vault_container):
    container, contents = vault_container
    changed = sorted(contents)[:10]
    new = change_blobs(container, changed, seed=7)
    assert set(new) == set(changed)
    assert all(new[name] != contents[name] for name in changed)
    assert read_all(container) == {**contents, **new}


def test_stop_and_restart_keep_data_and_port(azurite, vault_container):
    container, contents = vault_container
    port, connection_string = azurite.port, azurite.connection_string
    process = azurite.process
    assert azurite.stop() == 0
    assert not azurite.running
    assert process.poll() == 0
    azurite.restart()
    assert azurite.running
    assert (azurite.port, azurite.connection_string) == (port, connection_string)
    assert read_all(container) == contents


def test_two_containers_are_independent(azurite):
    first, second = new_container(azurite), new_container(azurite)
    assert first.container_name != second.container_name
    a = fill_like_vault(first, 50, seed=1)
    b = fill_like_vault(second, 50, seed=2)
    assert a != b
    first.delete_blob("core/keyring")
    change_blobs(first, ["core/master"], seed=3)
    assert read_all(second) == b
    assert "core/keyring" not in read_all(first)
    first.delete_container()
    second.delete_container()


def test_own_azurite_is_gone_after_the_context(tmp_path):
    with Azurite() as emulator:
        container = new_container(emulator.connection_string, prefix="own")
        assert fill_like_vault(container, 20) == read_all(container)
        process, root = emulator.process, emulator.location.parent
    assert process.poll() is not None
    assert not root.exists()
