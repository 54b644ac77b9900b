"""Which snapshots `prune` keeps: restic's `forget` policy, as pure functions.

The rules are restic's `--keep-last`, `--keep-hourly`, `--keep-daily`,
`--keep-weekly` and `--keep-monthly`, so that anyone who knows restic can read a
policy without learning a new one. Snapshots are walked from newest to oldest:
`last` keeps the N newest; each calendar rule keeps a snapshot whenever its
bucket (its hour, day, ISO week or month) differs from that of the snapshot
kept before it for that rule, until the rule has kept N buckets. So each rule
keeps the newest snapshot of each of the N most recent buckets *that hold a
snapshot*: `daily 14` reaches further back than 14 days when runs were missed.
What is kept depends on the snapshots, never on the clock, so a prune after
backups stopped running removes nothing that the last prune kept.

Two deliberate differences from restic:

- Buckets are computed in UTC, never in the local time of the machine that
  took or prunes the snapshot, so the decision does not depend on where prune
  runs. Naive datetimes are taken to be UTC.
- The newest snapshot is always kept (reason "newest"), even by a policy whose
  counts are all 0: restic keeps everything for an empty policy, but prune must
  never be able to remove the newest committed snapshot either way, and an
  all-zero policy here means "keep only the newest".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, fields
from datetime import UTC, datetime


@dataclass(frozen=True)
class Policy:
    """How many snapshots, hours, days, ISO weeks and months to keep; 0 disables a rule.

    The defaults are the documented ones: a week of the latest runs, then a day
    of hours, two weeks of days, two months of weeks and a year of months.
    """

    last: int = 7
    hourly: int = 24
    daily: int = 14
    weekly: int = 8
    monthly: int = 12

    def __post_init__(self) -> None:
        # restic reads -1 as "unlimited"; refusing negatives keeps that habit
        # from silently disabling a rule here, which would delete snapshots.
        for field in fields(self):
            if getattr(self, field.name) < 0:
                raise ValueError(f"retention count {field.name} must be 0 or more, not {getattr(self, field.name)}")

    def describe(self) -> str:
        """The policy in one line for logs, e.g. "keep last 7, hourly 24, daily 14, weekly 8, monthly 12"."""
        return "keep " + ", ".join(f"{field.name} {getattr(self, field.name)}" for field in fields(self))


@dataclass(frozen=True)
class Decision:
    """What the policy says about one snapshot, and why.

    `reasons` names every rule that keeps the snapshot, in the order "last",
    "hourly", "daily", "weekly", "monthly", "newest"; it is empty exactly when
    `keep` is false. `time` is the snapshot's time in UTC.
    """

    id: str
    time: datetime
    keep: bool
    reasons: tuple[str, ...]


def _hour(time: datetime) -> Hashable:
    return (time.year, time.month, time.day, time.hour)


def _day(time: datetime) -> Hashable:
    return (time.year, time.month, time.day)


def _iso_week(time: datetime) -> Hashable:
    # The ISO year, not the calendar year: 2027-01-03 is in week 53 of 2026.
    iso = time.isocalendar()
    return (iso.year, iso.week)


def _month(time: datetime) -> Hashable:
    return (time.year, time.month)


# Each calendar rule: its Policy field (also the reason it gives) and its bucket.
_CALENDAR_RULES: tuple[tuple[str, Callable[[datetime], Hashable]], ...] = (
    ("hourly", _hour),
    ("daily", _day),
    ("weekly", _iso_week),
    ("monthly", _month),
)


def _utc(time: datetime) -> datetime:
    if time.tzinfo is None:
        return time.replace(tzinfo=UTC)
    return time.astimezone(UTC)


def _time_then_id(snapshot: tuple[str, datetime]) -> tuple[datetime, str]:
    snapshot_id, time = snapshot
    return time, snapshot_id


def apply(snapshots: Iterable[tuple[str, datetime]], policy: Policy) -> list[Decision]:
    """Decide, for every `(id, time)` snapshot, whether `policy` keeps it; newest first.

    Snapshots with the same time are ordered by id, the greater id first, so the
    result never depends on the order of the input. Raises ValueError when an id
    occurs twice: prune removes by id, so one id kept and forgotten at once
    would lose a snapshot the policy keeps.
    """
    ordered = sorted(((snapshot_id, _utc(time)) for snapshot_id, time in snapshots), key=_time_then_id, reverse=True)
    duplicates = sorted(snapshot_id for snapshot_id, n in Counter(i for i, _ in ordered).items() if n > 1)
    if duplicates:
        raise ValueError(f"snapshot ids occur more than once: {', '.join(duplicates)}")

    remaining = {name: getattr(policy, name) for name, _ in _CALENDAR_RULES}
    previous: dict[str, Hashable] = {}
    decisions = []
    for position, (snapshot_id, time) in enumerate(ordered):
        reasons = ["last"] if position < policy.last else []
        for name, bucket_of in _CALENDAR_RULES:
            if remaining[name] == 0:
                continue
            bucket = bucket_of(time)
            if previous.get(name) != bucket:
                previous[name] = bucket
                remaining[name] -= 1
                reasons.append(name)
        if position == 0:
            reasons.append("newest")
        decisions.append(Decision(snapshot_id, time, bool(reasons), tuple(reasons)))
    return decisions
