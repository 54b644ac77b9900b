"""Where backup repositories live: a blob container or a local directory.

Both stores offer the same small set of operations on keys (see
docs/backup-format.md); only the blob store can copy a source blob server-side,
so that blob data never passes through the function.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient

LOCK_KEY = "locks/repository"
LOCK_TTL = 60
LOCK_RENEW_EVERY = 20
CHUNK = 1024 * 1024
COPY_POLL_SECONDS = 0.5
COPY_TIMEOUT = 600


class LockHeld(RuntimeError):
    """Another run holds the repository lock."""


class LockLost(RuntimeError):
    """The lock could not be renewed: stop before committing anything."""


class StoreError(RuntimeError):
    """A store operation failed in a way the operator must hear about."""


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    md5: str | None  # lowercase hex, when the store knows it


class Lock:
    """Held for one run; renewed in the background. `check()` raises LockLost if renewal failed."""

    def __init__(self, renew: Callable[[], None], release: Callable[[], None], description: str) -> None:
        self.description = description
        self._renew = renew
        self._release = release
        self._stop = threading.Event()
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._keep, name="backup-lock", daemon=True)
        self._thread.start()

    def _keep(self) -> None:
        while not self._stop.wait(LOCK_RENEW_EVERY):
            try:
                self._renew()
            except Exception as error:  # any failure means we may no longer be the only writer
                self._error = error
                return

    def check(self) -> None:
        """Renew now and raise LockLost if the lock is no longer ours (call right before a commit)."""
        if self._error is None:
            try:
                self._renew()
            except Exception as error:
                self._error = error
        if self._error is not None:
            raise LockLost(f"lost the repository lock ({self.description}): {self._error}")

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(Exception):
            self._release()


class Store:
    """The operations a repository needs; implemented by BlobStore and DirStore."""

    description: str

    def list(self, prefix: str) -> Iterator[StoredObject]:
        raise NotImplementedError

    def read(self, key: str) -> bytes:
        raise NotImplementedError

    def write(self, key: str, data: bytes, *, create_only: bool = False) -> bool:
        """Write a small value; with create_only, return False instead of overwriting."""
        raise NotImplementedError

    def chunks(self, key: str) -> Iterator[bytes]:
        raise NotImplementedError

    def upload(self, key: str, chunks: Iterable[bytes]) -> None:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def lock(self, owner: str) -> Lock:
        raise NotImplementedError


def _md5_hex(value: Any) -> str | None:
    return bytes(value).hex() if value else None


class BlobStore(Store):
    def __init__(self, container: ContainerClient, description: str, read_urls: Any = None) -> None:
        self.container = container
        self.description = description
        self.read_urls = read_urls  # azure.ReadUrls for this container: lets restores copy server-side

    def ensure_exists(self) -> None:
        from azure.core.exceptions import ResourceExistsError  # noqa: PLC0415

        with contextlib.suppress(ResourceExistsError):
            self.container.create_container()

    def list(self, prefix: str) -> Iterator[StoredObject]:
        for blob in self.container.list_blobs(name_starts_with=prefix or None):
            yield StoredObject(blob.name, blob.size, _md5_hex(blob.content_settings.content_md5))

    def read(self, key: str) -> bytes:
        return self.container.get_blob_client(key).download_blob().readall()

    def write(self, key: str, data: bytes, *, create_only: bool = False) -> bool:
        from azure.core.exceptions import ResourceExistsError  # noqa: PLC0415

        try:
            self.container.get_blob_client(key).upload_blob(data, overwrite=not create_only)
        except ResourceExistsError:
            return False
        return True

    def chunks(self, key: str) -> Iterator[bytes]:
        yield from self.container.get_blob_client(key).download_blob().chunks()

    def upload(self, key: str, chunks: Iterable[bytes]) -> None:
        self.container.get_blob_client(key).upload_blob(iter(chunks), overwrite=True)

    def delete(self, key: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError  # noqa: PLC0415

        with contextlib.suppress(ResourceNotFoundError):
            self.container.get_blob_client(key).delete_blob()

    def exists(self, key: str) -> bool:
        return self.container.get_blob_client(key).exists()

    def copy_from_url(self, key: str, source_url: str, source_etag: str | None) -> None:
        """Server-side copy of one source blob version; raises ResourceModifiedError if it changed."""
        from azure.core import MatchConditions  # noqa: PLC0415

        blob = self.container.get_blob_client(key)
        conditions = {"source_etag": source_etag, "source_match_condition": MatchConditions.IfNotModified}
        result = blob.start_copy_from_url(source_url, **(conditions if source_etag else {}))
        status = result.get("copy_status")
        deadline = time.monotonic() + COPY_TIMEOUT
        while status == "pending":  # across accounts Azure may copy asynchronously
            if time.monotonic() > deadline:
                blob.abort_copy(result["copy_id"])
                raise StoreError(f"copy of {key} still pending after {COPY_TIMEOUT}s")
            time.sleep(COPY_POLL_SECONDS)
            status = blob.get_blob_properties().copy.status
        if status != "success":
            raise StoreError(f"copy of {key} ended with status {status}")

    def lock(self, owner: str) -> Lock:
        from azure.core.exceptions import HttpResponseError, ResourceExistsError  # noqa: PLC0415

        blob = self.container.get_blob_client(LOCK_KEY)
        with contextlib.suppress(ResourceExistsError):
            blob.upload_blob(b"", overwrite=False)
        try:
            lease = blob.acquire_lease(lease_duration=LOCK_TTL)
        except HttpResponseError as error:
            if error.status_code == 409:
                raise LockHeld(
                    f"another backup, prune or restore holds the lease on {LOCK_KEY} in {self.description}; "
                    f"try again later (a crashed run's lease expires within {LOCK_TTL}s)"
                ) from None
            raise
        return Lock(lease.renew, lease.release, f"lease on {LOCK_KEY}")


class DirStore(Store):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.description = str(root)

    def ensure_exists(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise StoreError(f"key {key!r} leaves the repository")
        return path

    def list(self, prefix: str) -> Iterator[StoredObject]:
        base = self._path(prefix) if prefix else self.root
        if not base.exists():
            return
        for path in sorted(base.rglob("*")):
            if path.is_file() and ".tmp-" not in path.name:
                yield StoredObject(path.relative_to(self.root).as_posix(), path.stat().st_size, None)

    def read(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def write(self, key: str, data: bytes, *, create_only: bool = False) -> bool:
        return self._commit(key, [data], create_only=create_only)

    def chunks(self, key: str) -> Iterator[bytes]:
        with self._path(key).open("rb") as file:
            while chunk := file.read(CHUNK):
                yield chunk

    def upload(self, key: str, chunks: Iterable[bytes]) -> None:
        self._commit(key, chunks, create_only=False)

    def _commit(self, key: str, chunks: Iterable[bytes], *, create_only: bool) -> bool:
        """Write to a temporary file, fsync, then link or rename into place: readers never see half a file."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex}")
        try:
            with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as file:
                for chunk in chunks:
                    file.write(chunk)
                file.flush()
                os.fsync(file.fileno())
            if create_only:
                try:
                    os.link(temporary, path)
                except FileExistsError:
                    return False
            else:
                os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
        return True

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def lock(self, owner: str) -> Lock:
        path = self._path(LOCK_KEY)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)

        def holder() -> str:
            return json.dumps(
                {"owner": owner, "pid": os.getpid(), "host": socket.gethostname(), "expires": time.time() + LOCK_TTL}
            )

        token = _create_lock_file(path, holder())

        def renew() -> None:
            if not path.exists() or path.stat().st_ino != token:
                raise LockLost(f"{path} was removed or taken over")
            path.write_text(holder())  # in place: the inode is our proof of ownership

        def release() -> None:
            if path.exists() and path.stat().st_ino == token:
                path.unlink()

        return Lock(renew, release, str(path))


def _create_lock_file(path: Path, content: str) -> int:
    """Create the lock file exclusively (taking over an expired one); return its inode."""
    for _ in range(2):
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            current = _read_lock(path)
            if _lock_alive(path, current):
                current = current or {}
                expires = datetime.fromtimestamp(current.get("expires", time.time()), UTC)
                raise LockHeld(
                    f"{current.get('owner', 'another run')} (pid {current.get('pid')} on {current.get('host')}) "
                    f"holds {path} until {expires.isoformat(timespec='seconds')} unless it renews it; "
                    "try again later"
                ) from None
            path.unlink(missing_ok=True)  # expired: its run died
            continue
        with os.fdopen(descriptor, "w") as file:
            file.write(content)
        return path.stat().st_ino
    raise LockHeld(f"could not take {path}: another run took it over first")


def _lock_alive(path: Path, current: dict[str, Any] | None) -> bool:
    if current is not None:
        return current.get("expires", 0) > time.time()
    try:  # being written right now, or unreadable: judge by its age
        return path.stat().st_mtime > time.time() - LOCK_TTL
    except FileNotFoundError:
        return False


def _read_lock(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def md5_of(chunks: Iterable[bytes]) -> tuple[str, int]:
    digest = hashlib.md5(usedforsecurity=False)
    size = 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size
