"""`run`: take one snapshot of Vault's storage into the repository.

Blob source: list the container, copy only what the previous snapshot does not
already hold (server-side, in parallel), list again and copy what changed
meanwhile, for a bounded number of passes, then commit the manifest.
Raft source: stream Vault's raft snapshot into the repository.
"""

from __future__ import annotations

import base64
import hashlib
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote
from xml.etree import ElementTree

from shared.settings import BackupSettings

from .repository import RAFT_ENTRY, Entry, Manifest, Repository, iso, object_key, raft_object_key
from .stores import CHUNK, BlobStore

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient

    from .azure import ReadUrls

# Without these a container is not Vault's (or is empty): refuse rather than back up nothing.
VAULT_MARKERS = ("core/seal-config", "core/keyring")

Progress = Callable[[int], None]


class BackupRefused(RuntimeError):
    """The source is not something to back up; nothing was committed."""


@dataclass(frozen=True, slots=True)
class SourceBlob:
    name: str
    size: int
    md5: str | None
    etag: str


@dataclass
class RunResult:
    manifest: Manifest
    duration_s: float

    def as_dict(self) -> dict[str, Any]:
        manifest = self.manifest
        return {
            "id": manifest.id,
            "source": manifest.source.get("kind"),
            "entries": len(manifest.entries),
            "copied": manifest.copied,
            "reused": manifest.reused,
            "bytes": manifest.bytes,
            "copied_bytes": manifest.copied_bytes,
            "converged": manifest.converged,
            "passes": manifest.passes,
            "duration_s": round(self.duration_s, 3),
        }


def list_source(container: ContainerClient, skip: str) -> dict[str, SourceBlob]:
    """Name, size, MD5 and ETag of every blob but `skip` (the lock blob), one List Blobs page (5,000) per request.

    The SDK's list_blobs builds a full model per blob: about 240 us of CPU each,
    most of a no-change run. This sends the same signed, retried request through
    the client's own pipeline and reads only the four fields it needs.
    """
    from azure.core.rest import HttpRequest  # noqa: PLC0415

    listing: dict[str, SourceBlob] = {}
    marker = ""
    while True:
        url = f"{container.url}?restype=container&comp=list&maxresults=5000"
        response = container._client._send_request(
            HttpRequest("GET", url + (f"&marker={quote(marker)}" if marker else ""))
        )
        response.raise_for_status()
        page = ElementTree.fromstring(response.read())
        for blob in page.iter("Blob"):
            properties = blob.find("Properties")
            md5 = properties.findtext("Content-MD5")
            etag = properties.findtext("Etag") or ""
            element = blob.find("Name")
            name = element.text or ""
            if element.get("Encoded") == "true":  # names with characters XML cannot carry come percent-encoded
                name = unquote(name)
            if name == skip:
                continue
            listing[name] = SourceBlob(
                name,
                int(properties.findtext("Content-Length") or 0),
                base64.b64decode(md5).hex() if md5 else None,
                etag if etag.startswith('"') else f'"{etag}"',  # as in response headers and the SDK's models
            )
        marker = page.findtext("NextMarker") or ""
        if not marker:
            return listing


class BlobBackup:
    """One run against a blob container source."""

    def __init__(
        self,
        repository: Repository,
        container: ContainerClient,
        urls: ReadUrls,
        settings: BackupSettings,
        progress: Progress | None = None,
    ) -> None:
        self.repository = repository
        self.container = container
        self.urls = urls
        self.settings = settings
        self.progress = progress or (lambda _: None)
        self.copied = 0
        self.copied_bytes = 0

    def source(self) -> dict[str, Any]:
        return {"kind": "blob", "account": self.container.account_name, "container": self.container.container_name}

    def take(self, snapshot: str, started: datetime) -> Manifest:
        listing = list_source(self.container, self.settings.lock_blob)
        missing = [name for name in VAULT_MARKERS if name not in listing]
        if missing:
            raise BackupRefused(
                f"container {self.container.container_name!r} is not Vault's storage (it lacks {', '.join(missing)}"
                f"{'; it is empty' if not listing else ''}): check AZURE_BLOB_CONTAINER; nothing was committed"
            )
        previous = self.repository.latest()
        usable = previous is not None and previous.source == self.source()
        carried = {e.name: e for e in previous.entries} if usable else {}
        known = {e.object: e for e in carried.values()}
        entries: dict[str, Entry] = {}
        reused: set[str] = set()
        passes, converged = 0, False
        pending = listing
        while True:
            passes += 1
            to_copy = []
            for name, blob in pending.items():
                entry = _reusable(entries.get(name) or carried.get(name), blob, known)
                if entry is None:
                    to_copy.append(blob)
                else:
                    entries[name] = entry
                    reused.add(name)
            for entry in self._copy_all(to_copy):
                entries[entry.name] = entry
                known[entry.object] = entry
                reused.discard(entry.name)
            if not to_copy:
                # Nothing was copied, so nothing had time to drift from the listing just made.
                converged = not any(name not in entries for name in listing)
                break
            listing = list_source(self.container, self.settings.lock_blob)
            for name in set(entries) - set(listing):
                del entries[name]  # deleted by Vault during the run
            pending = {n: b for n, b in listing.items() if n not in entries or entries[n].etag != b.etag}
            if not pending:
                converged = True
                break
            if passes >= self.settings.max_passes:
                break
        return Manifest(
            id=snapshot,
            time=iso(started),
            source=self.source(),
            entries=sorted(entries.values(), key=lambda e: e.name),
            converged=converged,
            passes=passes,
            copied=self.copied,
            reused=len(reused),
            copied_bytes=self.copied_bytes,
            finished=iso(datetime.now(UTC)),
        )

    def _copy_all(self, blobs: list[SourceBlob]) -> Iterator[Entry]:
        with ThreadPoolExecutor(max_workers=self.settings.parallelism) as pool:
            for entry in pool.map(self._copy_one, blobs):
                if entry is not None:
                    self.copied += 1
                    self.copied_bytes += entry.size
                    self.progress(1)
                    yield entry

    def _copy_one(self, blob: SourceBlob) -> Entry | None:
        """Copy one blob version; None when it changed or vanished meanwhile (the next pass sees it)."""
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError  # noqa: PLC0415

        store = self.repository.store
        try:
            if blob.md5 and isinstance(store, BlobStore):
                key = object_key(blob.md5, blob.size)
                store.copy_from_url(key, self.urls.url(blob.name), blob.etag)
                return Entry(blob.name, blob.size, blob.md5, blob.etag, key)
            return self._copy_through(blob)
        except (ResourceModifiedError, ResourceNotFoundError):
            return None

    def _copy_through(self, blob: SourceBlob) -> Entry:
        """Download and upload: for a directory repository, or a blob Azure kept no MD5 for."""
        from azure.core import MatchConditions  # noqa: PLC0415

        download = self.container.get_blob_client(blob.name).download_blob(
            etag=blob.etag, match_condition=MatchConditions.IfNotModified
        )
        data = download.readall()  # one Vault value: at most a few MiB
        md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
        if blob.md5 and md5 != blob.md5:
            raise BackupRefused(f"{blob.name}: downloaded content does not match its Content-MD5; nothing committed")
        key = object_key(md5, len(data))
        self.repository.store.upload(key, [data])
        return Entry(blob.name, len(data), md5, blob.etag, key)


def _reusable(entry: Entry | None, blob: SourceBlob, known: dict[str, Entry]) -> Entry | None:
    if entry is not None and entry.etag == blob.etag:
        return entry
    if blob.md5:
        stored = known.get(object_key(blob.md5, blob.size))
        if stored is not None:
            return Entry(blob.name, blob.size, blob.md5, blob.etag, stored.object)
    return None


class RaftBackup:
    """One run against Vault's integrated storage: GET sys/storage/raft/snapshot."""

    def __init__(self, repository: Repository, address: str, token: str) -> None:
        self.repository = repository
        self.address = address
        self.token = token

    def source(self) -> dict[str, Any]:
        return {"kind": "raft", "address": self.address}

    def take(self, snapshot: str, started: datetime) -> Manifest:
        with tempfile.TemporaryDirectory(prefix="vaultfn-raft-") as directory:
            path = Path(directory) / "snapshot.gz"
            md5, size = self._download(path)
            _check_archive(path, size)
            previous = self.repository.latest()
            same = previous is not None and previous.entries and previous.entries[0].md5 == md5
            if same:
                key, copied = previous.entries[0].object, 0
            else:
                key, copied = raft_object_key(snapshot), 1
                self.repository.store.upload(key, _file_chunks(path))
        return Manifest(
            id=snapshot,
            time=iso(started),
            source=self.source(),
            entries=[Entry(RAFT_ENTRY, size, md5, None, key)],
            copied=copied,
            reused=1 - copied,
            copied_bytes=size * copied,
            finished=iso(datetime.now(UTC)),
        )

    def _download(self, path: Path) -> tuple[str, int]:
        import httpx  # noqa: PLC0415

        digest = hashlib.md5(usedforsecurity=False)
        size = 0
        url = f"{self.address}/v1/sys/storage/raft/snapshot"
        headers = {"X-Vault-Token": self.token}
        # A periodic token lives as long as it is renewed: each run renews it (best effort).
        httpx.post(f"{self.address}/v1/auth/token/renew-self", headers=headers, timeout=30, trust_env=False)
        with httpx.stream("GET", url, headers=headers, timeout=300, follow_redirects=True, trust_env=False) as answer:
            if answer.status_code != 200:
                answer.read()
                raise BackupRefused(f"GET {url}: HTTP {answer.status_code} {_vault_errors(answer.text)}")
            with path.open("wb") as file:
                for chunk in answer.iter_bytes(CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    file.write(chunk)
        return digest.hexdigest(), size


def _vault_errors(text: str) -> str:
    import json  # noqa: PLC0415

    try:
        return "; ".join(json.loads(text).get("errors", [])) or text[:200]
    except ValueError:
        return text[:200]


def _check_archive(path: Path, size: int) -> None:
    """Raft snapshot agents were burnt by silent 0-byte snapshots: insist on a readable archive."""
    if size == 0:
        raise BackupRefused("Vault returned an empty raft snapshot; nothing was committed")
    try:
        with tarfile.open(path, "r:gz") as archive:
            members = archive.getnames()
    except (tarfile.TarError, OSError, EOFError) as error:
        raise BackupRefused(f"the raft snapshot is not a valid archive ({error}); nothing was committed") from None
    if not members:
        raise BackupRefused("the raft snapshot archive is empty; nothing was committed")


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as file:
        while chunk := file.read(CHUNK):
            yield chunk


def run(repository: Repository, taker: BlobBackup | RaftBackup) -> RunResult:
    """Take and commit one snapshot under the repository lock."""
    started = time.monotonic()
    repository.initialize()
    lock = repository.lock("backup run")
    try:
        moment = datetime.now(UTC)
        manifest = taker.take(repository.new_id(moment), moment)
        repository.commit(manifest, lock)
    finally:
        lock.release()
    return RunResult(manifest, time.monotonic() - started)
