"""A backup repository (docs/backup-format.md): config, manifests, objects, lock."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .stores import Lock, Store

FORMAT = "vaultfn-backup"
VERSION = 1
TOOL = f"{FORMAT} {VERSION}"
CONFIG_KEY = "config.json"
SNAPSHOTS = "snapshots/"
OBJECTS = "objects/"
RAFT_ENTRY = "raft.snap"


class RepositoryError(RuntimeError):
    """The repository is not one this tool can read, or a snapshot is missing."""


@dataclass(frozen=True, slots=True)
class Entry:
    name: str
    size: int
    md5: str
    etag: str | None
    object: str

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "md5": self.md5, "etag": self.etag, "object": self.object}


@dataclass
class Manifest:
    id: str
    time: str
    source: dict[str, Any]
    entries: list[Entry]
    converged: bool = True
    passes: int = 1
    copied: int = 0
    reused: int = 0
    copied_bytes: int = 0
    finished: str = ""

    @property
    def bytes(self) -> int:
        return sum(entry.size for entry in self.entries)

    @property
    def moment(self) -> datetime:
        return datetime.fromisoformat(self.time.replace("Z", "+00:00"))

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "id": self.id,
            "time": self.time,
            "finished": self.finished,
            "tool": TOOL,
            "source": self.source,
            "converged": self.converged,
            "passes": self.passes,
            "counts": {"entries": len(self.entries), "copied": self.copied, "reused": self.reused},
            "bytes": self.bytes,
            "copied_bytes": self.copied_bytes,
            "entries": [entry.as_dict() for entry in sorted(self.entries, key=lambda e: e.name)],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        if data.get("format") != FORMAT:
            raise RepositoryError(f"not a {FORMAT} manifest")
        if int(data.get("version", 0)) > VERSION:
            raise RepositoryError(f"manifest version {data['version']} is newer than this tool ({VERSION}); upgrade it")
        counts = data.get("counts", {})
        return cls(
            id=data["id"],
            time=data["time"],
            source=data["source"],
            entries=[Entry(**entry) for entry in data["entries"]],
            converged=data.get("converged", True),
            passes=data.get("passes", 1),
            copied=counts.get("copied", 0),
            reused=counts.get("reused", 0),
            copied_bytes=data.get("copied_bytes", 0),
            finished=data.get("finished", ""),
        )

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "time": self.time,
            "source": self.source.get("kind"),
            "entries": len(self.entries),
            "bytes": self.bytes,
            "converged": self.converged,
        }


def object_key(md5: str, size: int) -> str:
    return f"{OBJECTS}{md5[:2]}/{md5}-{size}"


def raft_object_key(snapshot_id: str) -> str:
    return f"{OBJECTS}raft/{snapshot_id}.snap"


def snapshot_id(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Repository:
    def __init__(self, store: Store) -> None:
        self.store = store

    @property
    def description(self) -> str:
        return self.store.description

    def initialize(self) -> None:
        """Create the repository on first use; refuse a store that holds something else."""
        ensure = getattr(self.store, "ensure_exists", None)
        if ensure is not None:
            ensure()
        if self.store.exists(CONFIG_KEY):
            config = json.loads(self.store.read(CONFIG_KEY))
            if config.get("format") != FORMAT:
                raise RepositoryError(f"{self.description} holds something else than a {FORMAT} repository")
            if int(config.get("version", 0)) > VERSION:
                raise RepositoryError(f"{self.description} is format version {config['version']}; upgrade this tool")
            return
        config = {"format": FORMAT, "version": VERSION, "created": iso(datetime.now(UTC))}
        self.store.write(CONFIG_KEY, json.dumps(config).encode(), create_only=True)

    def lock(self, owner: str) -> Lock:
        return self.store.lock(owner)

    def snapshot_ids(self) -> list[str]:
        ids = [obj.key[len(SNAPSHOTS) : -len(".json")] for obj in self.store.list(SNAPSHOTS)]
        return sorted(i for i in ids if i)

    def load(self, snapshot: str) -> Manifest:
        if "/" in snapshot or snapshot.startswith(".") or not snapshot:
            raise RepositoryError(f"{snapshot!r} is not a snapshot id")
        key = f"{SNAPSHOTS}{snapshot}.json"
        if not self.store.exists(key):
            raise RepositoryError(f"no snapshot {snapshot!r} in {self.description} (see `list`)")
        return Manifest.from_dict(json.loads(self.store.read(key)))

    def manifests(self) -> list[Manifest]:
        return [self.load(snapshot) for snapshot in self.snapshot_ids()]

    def latest(self) -> Manifest | None:
        ids = self.snapshot_ids()
        return self.load(ids[-1]) if ids else None

    def new_id(self, moment: datetime) -> str:
        base = snapshot_id(moment)
        taken = set(self.snapshot_ids())
        candidate, suffix = base, 2
        while candidate in taken:
            candidate, suffix = f"{base}-{suffix}", suffix + 1
        return candidate

    def commit(self, manifest: Manifest, lock: Lock) -> None:
        """Write the manifest: the commit point. Checks the lock right before, and never overwrites."""
        lock.check()
        data = json.dumps(manifest.as_dict(), separators=(",", ":")).encode()
        if not self.store.write(f"{SNAPSHOTS}{manifest.id}.json", data, create_only=True):
            raise RepositoryError(f"snapshot {manifest.id} exists already; nothing was overwritten")

    def forget(self, snapshot: str) -> None:
        self.store.delete(f"{SNAPSHOTS}{snapshot}.json")
