"""A backup repository (docs/backup-format.md): config, manifests, objects, lock."""

from __future__ import annotations

import json
import re
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
# `YYYYMMDDTHHMMSSZ`, with `-2`, `-3`, ... when taken (docs/backup-format.md): nothing else names a snapshot.
SNAPSHOT_ID = re.compile(r"\d{8}T\d{6}Z(?:-[1-9]\d{0,5})?")
MD5_HEX = re.compile(r"[0-9a-f]{32}")
UNREADABLE_HINT = (
    "restore another snapshot (see `list`); to forget this one, move the file out of snapshots/ "
    "(`prune` deletes nothing while a manifest cannot be read)"
)


class RepositoryError(RuntimeError):
    """The repository is not one this tool can read, or a snapshot is missing."""


class ManifestError(RepositoryError):
    """A committed manifest cannot be read or is not a valid one (damaged or tampered with)."""

    def __init__(self, snapshot: str, where: str, problem: str) -> None:
        key = f"{SNAPSHOTS}{snapshot}.json"
        self.key = key if key.isprintable() and len(key) <= 80 else shown(key)
        super().__init__(f"{self.key} in {where} is not a valid manifest: {problem}; {UNREADABLE_HINT}")
        self.snapshot = snapshot
        self.problem = problem


def shown(value: object, limit: int = 60) -> str:
    """A value for an error message: repr (control characters escaped), cut to `limit` characters."""
    text = repr(value)
    length = len(value) if isinstance(value, str) else len(text)
    return text if len(text) <= limit else f"{text[: limit - 1]}... ({length} characters)"


def check_snapshot_id(snapshot: str) -> str:
    if not isinstance(snapshot, str) or not SNAPSHOT_ID.fullmatch(snapshot):
        raise RepositoryError(
            f"{shown(snapshot)} is not a snapshot id (ids look like 20261204T030000Z); see `list` for the snapshots"
        )
    return snapshot


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
    def from_dict(cls, data: Any) -> Manifest:
        """Parse a manifest, refusing what docs/backup-format.md does not allow; RepositoryError says what."""
        if not isinstance(data, dict):
            raise RepositoryError(f"it holds {type(data).__name__}, not a JSON object")
        if data.get("format") != FORMAT:
            raise RepositoryError(f"'format' is {shown(data.get('format'), 40)}, not {FORMAT!r}")
        version = _get(data, "version", int)
        if version > VERSION:
            raise RepositoryError(f"manifest version {version} is newer than this tool ({VERSION}); upgrade it")
        if version < 1:
            raise RepositoryError(f"'version' is {version}; the first version is 1")
        time = _get(data, "time", str)
        try:
            aware = datetime.fromisoformat(time.replace("Z", "+00:00")).tzinfo is not None
        except ValueError:
            aware = False
        if not aware:
            raise RepositoryError(f"'time' is {shown(time, 40)}, not a UTC time such as 2026-12-04T03:00:00Z")
        source = _get(data, "source", dict)
        entries = [_entry(item, index) for index, item in enumerate(_get(data, "entries", list))]
        seen: set[str] = set()
        for entry in entries:
            if entry.name in seen:
                raise RepositoryError(f"two entries are named {shown(entry.name, 40)}")
            seen.add(entry.name)
        if source.get("kind") == "raft" and len(entries) != 1:
            raise RepositoryError(f"a raft snapshot has exactly one entry, not {len(entries)}")
        counts = _get(data, "counts", dict, default={})
        return cls(
            id=_get(data, "id", str),
            time=time,
            source=source,
            entries=entries,
            converged=_get(data, "converged", bool, default=True),
            passes=_get(data, "passes", int, default=1),
            copied=_get(counts, "copied", int, "counts: ", 0),
            reused=_get(counts, "reused", int, "counts: ", 0),
            copied_bytes=_get(data, "copied_bytes", int, default=0),
            finished=_get(data, "finished", str, default=""),
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


_MISSING = object()
_KINDS = {int: "a whole number (0 or more)", str: "text", bool: "true or false", dict: "an object", list: "a list"}


def _get(data: dict[str, Any], key: str, kind: type, where: str = "", default: Any = _MISSING) -> Any:
    """data[key], which must be of `kind` (an int must not be negative); `default` when it is optional."""
    if key not in data:
        if default is _MISSING:
            raise RepositoryError(f"{where}{key!r} is missing")
        return default
    value = data[key]
    if not isinstance(value, kind) or (kind is int and (isinstance(value, bool) or value < 0)):
        raise RepositoryError(f"{where}{key!r} is {shown(value, 40)}, not {_KINDS[kind]}")
    return value


def _entry(raw: Any, index: int) -> Entry:
    """One manifest entry; the common, valid case is checked in one pass (a manifest holds one per blob)."""
    if type(raw) is dict:
        name, size, md5, etag, key = (raw.get(k) for k in ("name", "size", "md5", "etag", "object"))
        if (
            type(name) is str
            and name
            and type(size) is int
            and size >= 0
            and type(md5) is str
            and MD5_HEX.fullmatch(md5)
            and (etag is None or type(etag) is str)
            and type(key) is str
            and _is_object_key(key)
        ):
            return Entry(name, size, md5, etag, key)
    return _checked_entry(raw, index)


def _is_object_key(key: str) -> bool:
    """Under objects/, printable, no backslash, and no segment that is empty, "." or ".."."""
    return (
        key.startswith(OBJECTS)
        and key.isprintable()
        and "\\" not in key
        and "//" not in key
        and "/./" not in key
        and "/../" not in key
        and not key.endswith(("/", "/.", "/.."))
    )


def _checked_entry(raw: Any, index: int) -> Entry:
    """Field by field, to say precisely what is wrong."""
    if not isinstance(raw, dict):
        raise RepositoryError(f"entry {index} is {shown(raw, 40)}, not an object")
    name = _get(raw, "name", str, f"entry {index}: ")
    where = f"entry {index} ({shown(name, 40)}): "
    if not name:
        raise RepositoryError(f"entry {index}: 'name' is empty")
    size = _get(raw, "size", int, where)
    md5 = _get(raw, "md5", str, where)
    if not MD5_HEX.fullmatch(md5):
        raise RepositoryError(f"{where}'md5' is {shown(md5, 40)}, not 32 lowercase hex digits")
    etag = raw.get("etag")
    if etag is not None and not isinstance(etag, str):
        raise RepositoryError(f"{where}'etag' is {shown(etag, 40)}, not text or null")
    key = _get(raw, "object", str, where)
    if not _is_object_key(key):
        raise RepositoryError(f"{where}'object' is {shown(key, 60)}, not a key under {OBJECTS}")
    return Entry(name, size, md5, etag, key)


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
        self.skipped: list[ManifestError] = []  # unreadable manifests `latest()` passed over

    @property
    def description(self) -> str:
        return self.store.description

    def initialize(self) -> None:
        """Create the repository on first use; refuse a store that holds something else."""
        ensure = getattr(self.store, "ensure_exists", None)
        if ensure is not None:
            ensure()
        if self.store.exists(CONFIG_KEY):
            try:
                config = json.loads(self.store.read(CONFIG_KEY))
            except ValueError as error:
                config = {"problem": f"not JSON: {error}"}
            if not isinstance(config, dict):
                config = {"problem": f"{type(config).__name__}, not a JSON object"}
            version = config.get("version")
            if config.get("format") != FORMAT or not isinstance(version, int) or isinstance(version, bool):
                problem = config.get("problem") or f"format {shown(config.get('format'), 40)}, version {shown(version)}"
                raise RepositoryError(
                    f"{self.description} holds something else than a {FORMAT} repository ({CONFIG_KEY}: {problem}); "
                    f"choose another repository, or if only {CONFIG_KEY} was damaged, write "
                    f'{{"format": "{FORMAT}", "version": {VERSION}}} into it'
                )
            if version > VERSION:
                raise RepositoryError(f"{self.description} is format version {version}; upgrade this tool")
            return
        config = {"format": FORMAT, "version": VERSION, "created": iso(datetime.now(UTC))}
        self.store.write(CONFIG_KEY, json.dumps(config).encode(), create_only=True)

    def lock(self, owner: str) -> Lock:
        return self.store.lock(owner)

    def snapshot_ids(self) -> list[str]:
        """The <name> of every snapshots/<name>.json, sorted (a damaged file's name may not be an id)."""
        names = (stored.key[len(SNAPSHOTS) :] for stored in self.store.list(SNAPSHOTS))
        return sorted(name[: -len(".json")] for name in names if name.endswith(".json") and "/" not in name)

    def load(self, snapshot: str) -> Manifest:
        """One committed snapshot; RepositoryError if there is none, ManifestError if its manifest is not valid."""
        key = f"{SNAPSHOTS}{check_snapshot_id(snapshot)}.json"
        if not self.store.exists(key):
            raise RepositoryError(f"no snapshot {snapshot!r} in {self.description} (see `list`)")
        try:
            manifest = Manifest.from_dict(json.loads(self.store.read(key)))
        except (OSError, ValueError, RecursionError) as error:
            raise ManifestError(snapshot, self.description, f"not readable JSON ({shown(str(error), 100)})") from None
        except RepositoryError as error:
            raise ManifestError(snapshot, self.description, str(error)) from None
        if manifest.id != snapshot:
            raise ManifestError(snapshot, self.description, f"its 'id' is {shown(manifest.id, 40)}, not {snapshot}")
        return manifest

    def _listed(self, snapshot: str) -> Manifest:
        """load() for a name from the listing, where a file whose name is not an id is a damaged manifest too."""
        if not SNAPSHOT_ID.fullmatch(snapshot):
            raise ManifestError(snapshot, self.description, "its file name is not a snapshot id")
        return self.load(snapshot)

    def scan(self) -> tuple[list[Manifest], list[ManifestError]]:
        """Every committed snapshot, and what is wrong with each manifest that cannot be read."""
        manifests: list[Manifest] = []
        unreadable: list[ManifestError] = []
        for snapshot in self.snapshot_ids():
            try:
                manifests.append(self._listed(snapshot))
            except ManifestError as error:
                unreadable.append(error)
        return manifests, unreadable

    def manifests(self) -> list[Manifest]:
        """Every committed snapshot; raises ManifestError if any manifest cannot be read."""
        manifests, unreadable = self.scan()
        if unreadable:
            raise unreadable[0]
        return manifests

    def latest(self) -> Manifest | None:
        """The newest snapshot whose manifest can be read (the others go to `skipped`)."""
        for snapshot in reversed(self.snapshot_ids()):
            try:
                return self._listed(snapshot)
            except ManifestError as error:
                self.skipped.append(error)
        return None

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
