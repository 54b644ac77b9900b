"""`restore`: a blob snapshot into a container or a directory, a raft snapshot into a file or a Vault.

Every object is verified (size and MD5 against the manifest) as it is
restored; a mismatch stops the restore. Targets that hold data are refused
unless forced, so a restore never silently mixes with or overwrites data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .repository import Entry, Manifest, Repository
from .stores import BlobStore, md5_of

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient

Progress = Callable[[int], None]


class RestoreError(RuntimeError):
    """The restore cannot go on; the message says why and what to do."""


@dataclass
class RestoreResult:
    snapshot: str
    target: str
    objects: int
    bytes: int
    next_steps: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "snapshot": self.snapshot,
            "target": self.target,
            "objects": self.objects,
            "bytes": self.bytes,
            "next_steps": self.next_steps,
        }


def default_container_name(snapshot: str) -> str:
    return f"vault-restore-{snapshot.lower()}"[:63]


def _verified_bytes(repository: Repository, entry: Entry) -> bytes:
    data = b"".join(repository.store.chunks(entry.object))
    _check(entry, hashlib.md5(data, usedforsecurity=False).hexdigest(), len(data))
    return data


def _check(entry: Entry, md5: str | None, size: int) -> None:
    if size != entry.size or md5 != entry.md5:
        raise RestoreError(
            f"{entry.name}: stored object {entry.object} does not match the manifest "
            f"(size {size}, MD5 {md5}; expected {entry.size}, {entry.md5}); run `verify` and restore another snapshot"
        )


def _blob_entries(manifest: Manifest) -> list[Entry]:
    if manifest.source.get("kind") != "blob":
        raise RestoreError(f"snapshot {manifest.id} is a raft snapshot: restore it --to-file or --to-vault")
    return manifest.entries


def to_container(
    repository: Repository,
    manifest: Manifest,
    target: ContainerClient,
    force: bool = False,
    parallelism: int = 16,
    progress: Progress | None = None,
) -> RestoreResult:
    """Blob snapshot -> container (created if missing); server-side copies when the repository is a container."""
    from azure.core.exceptions import ResourceExistsError  # noqa: PLC0415

    entries = _blob_entries(manifest)
    try:
        target.create_container()
    except ResourceExistsError:
        if not force and next(iter(target.list_blobs()), None) is not None:
            raise RestoreError(
                f"container {target.container_name!r} is not empty; restore into a new container, "
                "or pass --force to write into it anyway"
            ) from None
    store = repository.store
    server_side = isinstance(store, BlobStore) and store.read_urls is not None
    target_store = BlobStore(target, f"container {target.container_name}")

    def one(entry: Entry) -> None:
        blob = target.get_blob_client(entry.name)
        if server_side:
            target_store.copy_from_url(entry.name, store.read_urls.url(entry.object), None)
            properties = blob.get_blob_properties()
            md5 = properties.content_settings.content_md5
            if md5 is None:
                md5_hex, size = md5_of(blob.download_blob().chunks())
            else:
                md5_hex, size = bytes(md5).hex(), properties.size
            _check(entry, md5_hex, size)
        else:
            blob.upload_blob(_verified_bytes(repository, entry), overwrite=True)
        if progress is not None:
            progress(1)

    _run_locked(repository, entries, one, parallelism)
    name = target.container_name
    return RestoreResult(
        manifest.id,
        f"container {name}",
        len(entries),
        manifest.bytes,
        f"Restored {len(entries)} blobs into container {name!r}. To run Vault on it, stop the function app, "
        f"set the app setting AZURE_BLOB_CONTAINER={name} (and the single-writer lock, if any, to match), "
        "then start the app; Vault unseals with the same Key Vault key as before.",
    )


def to_directory(
    repository: Repository, manifest: Manifest, directory: Path, force: bool = False, progress: Progress | None = None
) -> RestoreResult:
    """Blob snapshot -> one file per blob under `directory`."""
    entries = _blob_entries(manifest)
    root = directory.resolve()
    if root.exists() and any(root.iterdir()) and not force:
        raise RestoreError(f"{directory} is not empty; choose an empty directory, or pass --force")
    for entry in entries:
        if not (root / entry.name).resolve().is_relative_to(root):
            raise RestoreError(f"blob name {entry.name!r} would leave {directory}; refusing to restore")

    def one(entry: Entry) -> None:
        path = root / entry.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_verified_bytes(repository, entry))
        if progress is not None:
            progress(1)

    _run_locked(repository, entries, one, 8)
    return RestoreResult(
        manifest.id, str(directory), len(entries), manifest.bytes, f"Restored {len(entries)} blobs under {directory}."
    )


def _raft_entry(manifest: Manifest) -> Entry:
    if manifest.source.get("kind") != "raft":
        raise RestoreError(f"snapshot {manifest.id} is a blob snapshot: restore it --to-container or --to-dir")
    return manifest.entries[0]


def to_file(repository: Repository, manifest: Manifest, path: Path, force: bool = False) -> RestoreResult:
    entry = _raft_entry(manifest)
    if path.exists() and not force:
        raise RestoreError(f"{path} exists; choose another file, or pass --force")
    lock = repository.lock("restore")
    try:
        digest = hashlib.md5(usedforsecurity=False)
        size = 0
        partial = path.with_name(path.name + ".partial")
        with partial.open("wb") as file:
            for chunk in repository.store.chunks(entry.object):
                digest.update(chunk)
                size += len(chunk)
                file.write(chunk)
        _check(entry, digest.hexdigest(), size)
        partial.replace(path)
    finally:
        lock.release()
    return RestoreResult(
        manifest.id,
        str(path),
        1,
        size,
        f"Wrote raft snapshot {manifest.id} to {path}. Restore it with "
        f"`bao operator raft snapshot restore {path}` (add -force for another cluster, then unseal with the "
        "ORIGINAL cluster's keys).",
    )


def to_vault(
    repository: Repository, manifest: Manifest, address: str, token: str, force: bool = False
) -> RestoreResult:
    """Raft snapshot -> a running Vault: `snapshot`, or `snapshot-force` (another cluster) when forced."""
    import httpx  # noqa: PLC0415

    entry = _raft_entry(manifest)
    lock = repository.lock("restore")
    try:
        data = _verified_bytes(repository, entry)
        endpoint = "snapshot-force" if force else "snapshot"
        url = f"{address.rstrip('/')}/v1/sys/storage/raft/{endpoint}"
        answer = httpx.post(url, content=data, headers={"X-Vault-Token": token}, timeout=300, trust_env=False)
    finally:
        lock.release()
    if answer.status_code not in (200, 204):
        hint = " (a snapshot from another cluster needs --force)" if not force else ""
        raise RestoreError(f"POST {url}: HTTP {answer.status_code} {answer.text[:300]}{hint}")
    steps = "Vault restored the snapshot."
    if force:
        steps += " It is now sealed with the ORIGINAL cluster's keys: unseal it with those."
    return RestoreResult(manifest.id, address, 1, entry.size, steps)


def _run_locked(repository: Repository, entries: list[Entry], one: Callable[[Entry], None], parallelism: int) -> None:
    lock = repository.lock("restore")
    try:
        with ThreadPoolExecutor(max_workers=parallelism) as pool:
            for _ in pool.map(one, entries):
                pass
    finally:
        lock.release()
