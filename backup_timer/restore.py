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

from shared.settings import DEFAULT_LOCK_BLOB

from .repository import Entry, Manifest, Repository
from .stores import BlobStore, LockHeld, md5_of

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient

Progress = Callable[[int], None]


class RestoreError(RuntimeError):
    """The restore cannot go on; the message says why and what to do."""


class TargetInUse(LockHeld):
    """The target container's single-writer lock is held: a Vault runs on it."""


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
    from .verify import stored_chunks  # noqa: PLC0415 - module imports are left to to_container's owner

    data = b"".join(stored_chunks(repository, entry))
    _check(entry, hashlib.md5(data, usedforsecurity=False).hexdigest(), len(data))
    return data


def _check(entry: Entry, md5: str | None, size: int) -> None:
    if size != entry.size or md5 != entry.md5:
        raise RestoreError(
            f"{entry.name!r}: stored object {entry.object} does not match the manifest (size {size}, MD5 {md5}; "
            f"expected {entry.size}, {entry.md5}); run `verify` and restore another snapshot"
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
    lock_blob: str = DEFAULT_LOCK_BLOB,
) -> RestoreResult:
    """Blob snapshot -> container (created if missing); server-side copies when the repository is a container.

    A container whose single-writer lock is held has a Vault running on it: refused unless forced.
    """
    from azure.core.exceptions import ResourceExistsError  # noqa: PLC0415

    entries = [entry for entry in _blob_entries(manifest) if entry.name != lock_blob]
    try:
        target.create_container()
    except ResourceExistsError:
        if not force:
            _refuse_if_locked(target, lock_blob)
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

    name = target.container_name
    try:
        _run_locked(repository, entries, one, parallelism)
    except RestoreError as error:
        raise RestoreError(
            f"{error}; container {name!r} now holds a partial restore: delete it before restoring another snapshot"
        ) from None
    return RestoreResult(
        manifest.id,
        f"container {name}",
        len(entries),
        manifest.bytes,
        f"Restored {len(entries)} blobs into container {name!r}. To run Vault on it, stop the function app, "
        f"set the app setting AZURE_BLOB_CONTAINER={name} (and the single-writer lock, if any, to match), "
        "then start the app; Vault unseals with the same Key Vault key as before.",
    )


def _refuse_if_locked(target: ContainerClient, lock_blob: str) -> None:
    from azure.core.exceptions import ResourceNotFoundError  # noqa: PLC0415

    try:
        lease = target.get_blob_client(lock_blob).get_blob_properties().lease
    except ResourceNotFoundError:
        return
    if lease.state in ("leased", "breaking"):
        raise TargetInUse(
            f"container {target.container_name!r} is in use: its single-writer lock (blob {lock_blob}) is held, so a "
            "Vault is running on it; stop the function app (the lock is released, or expires within a minute) "
            "and restore again, or pass --force to write into it anyway"
        )


def to_directory(
    repository: Repository, manifest: Manifest, directory: Path, force: bool = False, progress: Progress | None = None
) -> RestoreResult:
    """Blob snapshot -> one file per blob under `directory`.

    Every blob name is checked before anything is written. Into an empty or new directory the
    files go to a hidden sibling first, renamed into place once every object verified: a restore
    that fails leaves nothing. Only a forced restore into a non-empty directory writes in place.
    """
    import shutil  # noqa: PLC0415 - module imports are left to to_container's owner
    import tempfile  # noqa: PLC0415

    from .verify import ObjectMissing  # noqa: PLC0415

    entries = _blob_entries(manifest)
    root = _target(repository, directory, "--to-dir")
    if root.exists() and not root.is_dir():
        raise RestoreError(f"{directory} exists and is not a directory; choose an empty or new directory")
    in_place = root.exists() and any(root.iterdir())
    if in_place and not force:
        raise RestoreError(f"{directory} is not empty; choose an empty directory, or pass --force")
    names = {entry.name for entry in entries}
    for entry in entries:
        parts = entry.name.split("/")
        leaves = entry.name.startswith("/") or ".." in parts
        if not leaves and ("\x00" in entry.name or any(part in ("", ".") for part in parts)):
            raise RestoreError(f"blob name {entry.name!r} is not a file path; restore --to-container (nothing written)")
        if leaves or not (root / entry.name).resolve().is_relative_to(root):  # resolve: symlinks in a forced target
            raise RestoreError(f"blob name {entry.name!r} would leave {directory}; refused (nothing written)")
        clash = next(("/".join(parts[:i]) for i in range(1, len(parts)) if "/".join(parts[:i]) in names), None)
        if clash is not None:
            raise RestoreError(
                f"blobs {clash!r} and {entry.name!r} cannot both be files in a directory; restore --to-container "
                "(nothing written)"
            )
    root.parent.mkdir(parents=True, exist_ok=True)
    target = root if in_place else Path(tempfile.mkdtemp(prefix=f".{root.name}.restoring-", dir=root.parent))

    def one(entry: Entry) -> None:
        path = target / entry.name
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_verified_bytes(repository, entry))
        except OSError as error:
            raise RestoreError(f"cannot write {path}: {error.strerror or error}") from None
        if progress is not None:
            progress(1)

    try:
        _run_locked(repository, entries, one, 8)
        if not in_place:
            if root.exists():
                root.rmdir()  # empty, as checked above
            target.rename(root)
    except Exception as error:
        if not in_place:
            shutil.rmtree(target, ignore_errors=True)
        if not isinstance(error, RestoreError | ObjectMissing):
            raise
        where = f"{directory} now holds part of the snapshot" if in_place else f"nothing was written to {directory}"
        raise RestoreError(f"{error}; {where}") from None
    return RestoreResult(
        manifest.id, str(directory), len(entries), manifest.bytes, f"Restored {len(entries)} blobs under {directory}."
    )


def _target(repository: Repository, path: Path, option: str) -> Path:
    """The resolved restore target; refuses `..`, a symlink, and anywhere in or around a directory repository."""
    store_root = getattr(repository.store, "root", None)
    resolved = path.resolve()
    if ".." in path.parts:
        problem = "contains '..'; name the target without it"
    elif path.is_symlink():
        problem = f"is a symlink (to {path.readlink()}); name the real target"
    elif store_root is not None and (
        resolved.is_relative_to(store_root.resolve()) or store_root.resolve().is_relative_to(resolved)
    ):
        problem = f"overlaps the repository {store_root}; restore somewhere else"
    else:
        return resolved
    raise RestoreError(f"{option} {str(path)!r} {problem} (nothing was written)")


def _raft_entry(manifest: Manifest) -> Entry:
    if manifest.source.get("kind") != "raft":
        raise RestoreError(f"snapshot {manifest.id} is a blob snapshot: restore it --to-container or --to-dir")
    return manifest.entries[0]


def to_file(repository: Repository, manifest: Manifest, path: Path, force: bool = False) -> RestoreResult:
    """Raft snapshot -> a file, written beside it under a temporary name and renamed once verified."""
    import tempfile  # noqa: PLC0415 - module imports are left to to_container's owner

    from .verify import stored_chunks  # noqa: PLC0415

    entry = _raft_entry(manifest)
    if path.is_dir():
        raise RestoreError(f"{path} is a directory; give a file name such as {path / (manifest.id + '.snap')}")
    _target(repository, path, "--to-file")
    if (path.exists() or path.is_symlink()) and not force:
        raise RestoreError(f"{path} exists; choose another file, or pass --force")
    if not path.parent.is_dir():
        raise RestoreError(f"directory {path.parent} does not exist; create it first, or choose another file")
    lock = repository.lock("restore")
    partial: Path | None = None
    try:
        descriptor, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
        partial = Path(name)
        digest = hashlib.md5(usedforsecurity=False)
        size = 0
        with open(descriptor, "wb") as file:
            for chunk in stored_chunks(repository, entry):
                digest.update(chunk)
                size += len(chunk)
                file.write(chunk)
        _check(entry, digest.hexdigest(), size)
        partial.replace(path)
        partial = None
    finally:
        if partial is not None:
            partial.unlink(missing_ok=True)  # a failed restore leaves nothing
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
