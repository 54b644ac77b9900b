"""`verify`: re-read stored objects and check their size and MD5 against the manifests."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .repository import Entry, Manifest, Repository
from .stores import md5_of


class ObjectMissing(RuntimeError):
    """A stored object a manifest references is not in the repository."""


@dataclass(frozen=True)
class Problem:
    object: str
    names: tuple[str, ...]
    reason: str


@dataclass
class VerifyResult:
    snapshots: list[str]
    objects: int = 0
    bytes: int = 0
    sampled: bool = False
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "snapshots": self.snapshots,
            "objects": self.objects,
            "bytes": self.bytes,
            "sampled": self.sampled,
            "problems": [{"object": p.object, "names": list(p.names), "reason": p.reason} for p in self.problems],
        }


def stored_chunks(repository: Repository, entry: Entry) -> Iterator[bytes]:
    """The chunks of an entry's stored object; ObjectMissing when it is not there."""
    try:
        yield from repository.store.chunks(entry.object)
    except Exception as error:  # a missing file, or the SDK's not-found
        if isinstance(error, FileNotFoundError) or getattr(error, "status_code", None) == 404:
            raise ObjectMissing(
                f"stored object {entry.object} of {entry.name!r} is missing from the repository; "
                "run `verify` to see what else is, and restore another snapshot"
            ) from None
        raise


def check_object(repository: Repository, entry: Entry) -> str | None:
    """The problem with one stored object, or None when its size and MD5 match."""
    try:
        md5, size = md5_of(stored_chunks(repository, entry))
    except ObjectMissing:
        return "missing"
    except Exception as error:  # transport errors, an unreadable file
        return f"unreadable: {type(error).__name__}: {next(iter(str(error).splitlines()), '')}"
    if size != entry.size:
        return f"size {size} instead of {entry.size}"
    if md5 != entry.md5:
        return f"MD5 {md5} instead of {entry.md5}"
    return None


def verify(
    repository: Repository,
    manifests: list[Manifest],
    sample: int | None = None,
    parallelism: int = 8,
    progress: Callable[[int], None] | None = None,
) -> VerifyResult:
    """Check every object the manifests reference, or `sample` of them chosen at random."""
    by_object: dict[str, list[Entry]] = {}
    for manifest in manifests:
        for entry in manifest.entries:
            by_object.setdefault(entry.object, []).append(entry)
    keys = sorted(by_object)
    if sample is not None and sample < len(keys):
        keys = random.sample(keys, sample)
    result = VerifyResult([m.id for m in manifests], sampled=sample is not None)

    def one(key: str) -> tuple[str, str | None]:
        return key, check_object(repository, by_object[key][0])

    with ThreadPoolExecutor(max_workers=parallelism) as pool:
        for key, problem in pool.map(one, keys):
            result.objects += 1
            result.bytes += by_object[key][0].size
            if problem is not None:
                names = tuple(sorted({entry.name for entry in by_object[key]}))
                result.problems.append(Problem(key, names, problem))
            if progress is not None:
                progress(1)
    return result
