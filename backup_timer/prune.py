"""`prune`: forget the snapshots the retention policy does not keep, then delete unreferenced objects.

Manifests go first, objects after: a prune that dies half-way leaves only
unreferenced objects, which the next prune removes. Objects left behind by a
failed run are unreferenced too and go the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.settings import BackupSettings

from .repository import OBJECTS, Repository, RepositoryError
from .retention import Decision, Policy, apply


@dataclass
class PruneResult:
    decisions: list[Decision]
    objects_deleted: int = 0
    bytes_deleted: int = 0
    dry_run: bool = False
    forgotten: list[str] = field(default_factory=list)

    @property
    def kept(self) -> list[str]:
        return [d.id for d in self.decisions if d.keep]

    def as_dict(self) -> dict[str, Any]:
        return {
            "kept": self.kept,
            "forgotten": self.forgotten,
            "objects_deleted": self.objects_deleted,
            "bytes_deleted": self.bytes_deleted,
            "dry_run": self.dry_run,
            "reasons": {d.id: list(d.reasons) for d in self.decisions if d.keep},
        }


def policy_of(settings: BackupSettings) -> Policy:
    return Policy(
        last=settings.keep_last,
        hourly=settings.keep_hourly,
        daily=settings.keep_daily,
        weekly=settings.keep_weekly,
        monthly=settings.keep_monthly,
    )


def prune(repository: Repository, policy: Policy, dry_run: bool = False) -> PruneResult:
    repository.initialize()
    lock = repository.lock("prune")
    try:
        manifests, unreadable = repository.scan()
        if unreadable:
            # Its objects are unknown: deleting "unreferenced" objects now could delete that snapshot's data.
            raise RepositoryError(
                f"prune deleted nothing: {len(unreadable)} manifest(s) cannot be read, so which objects they need "
                f"is unknown ({'; '.join(f'{e.key}: {e.problem}' for e in unreadable)}); repair each one, or move it "
                "out of snapshots/ to forget that snapshot, then prune again"
            )
        decisions = apply([(m.id, m.moment) for m in manifests], policy)
        result = PruneResult(decisions, dry_run=dry_run)
        keep = set(result.kept)
        referenced = {e.object for m in manifests if m.id in keep for e in m.entries}
        for manifest in manifests:
            if manifest.id not in keep:
                result.forgotten.append(manifest.id)
                if not dry_run:
                    lock.check()
                    repository.forget(manifest.id)
        if not dry_run:
            lock.check()
        for stored in list(repository.store.list(OBJECTS)):
            if stored.key not in referenced:
                result.objects_deleted += 1
                result.bytes_deleted += stored.size
                if not dry_run:
                    repository.store.delete(stored.key)
        return result
    finally:
        lock.release()
