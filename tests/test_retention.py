"""backup_timer.retention: restic's forget rules, one at a time, combined, and as properties."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backup_timer.retention import Decision, Policy, apply

NONE = Policy(last=0, hourly=0, daily=0, weekly=0, monthly=0)
ALL_REASONS = ("last", "hourly", "daily", "weekly", "monthly", "newest")


def only(**counts: int) -> Policy:
    """A policy with every rule off except the given ones."""
    return dataclasses.replace(NONE, **counts)


def at(text: str) -> datetime:
    """'2026-12-04T03:00' as an aware UTC datetime."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def snap(text: str) -> tuple[str, datetime]:
    """A snapshot at a UTC time, with the id the backup format gives it."""
    time = at(text)
    return time.strftime("%Y%m%dT%H%M%SZ"), time


def snaps(*texts: str) -> list[tuple[str, datetime]]:
    return [snap(text) for text in texts]


def kept(decisions: list[Decision]) -> dict[str, tuple[str, ...]]:
    return {decision.id: decision.reasons for decision in decisions if decision.keep}


# --- Policy ---


def test_defaults_are_the_documented_ones() -> None:
    assert dataclasses.astuple(Policy()) == (7, 24, 14, 8, 12)
    assert Policy().describe() == "keep last 7, hourly 24, daily 14, weekly 8, monthly 12"


def test_describe_shows_every_count() -> None:
    assert Policy(last=1, hourly=0, daily=3, weekly=0, monthly=2).describe() == (
        "keep last 1, hourly 0, daily 3, weekly 0, monthly 2"
    )


def test_policy_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Policy().daily = 3  # type: ignore[misc]


@pytest.mark.parametrize("field", ["last", "hourly", "daily", "weekly", "monthly"])
def test_negative_counts_are_refused(field: str) -> None:
    # restic's -1 means "unlimited"; here it must not quietly mean "disabled".
    with pytest.raises(ValueError, match=rf"^retention count {field} must be 0 or more, not -1$"):
        Policy(**{field: -1})


# --- each rule alone ---


def test_no_snapshots_no_decisions() -> None:
    assert apply([], Policy()) == []


def test_last_keeps_the_n_newest() -> None:
    decisions = apply(snaps(*(f"2026-12-04T{hour:02d}:00" for hour in range(10))), only(last=3))
    assert [(d.id, d.keep, d.reasons) for d in decisions] == [
        ("20261204T090000Z", True, ("last", "newest")),
        ("20261204T080000Z", True, ("last",)),
        ("20261204T070000Z", True, ("last",)),
        ("20261204T060000Z", False, ()),
        ("20261204T050000Z", False, ()),
        ("20261204T040000Z", False, ()),
        ("20261204T030000Z", False, ()),
        ("20261204T020000Z", False, ()),
        ("20261204T010000Z", False, ()),
        ("20261204T000000Z", False, ()),
    ]


def test_hourly_keeps_the_newest_of_each_recent_hour() -> None:
    every_20_minutes = [f"2026-12-04T{hour:02d}:{minute:02d}" for hour in range(10, 14) for minute in (0, 20, 40)]
    assert kept(apply(snaps(*every_20_minutes), only(hourly=3))) == {
        "20261204T134000Z": ("hourly", "newest"),
        "20261204T124000Z": ("hourly",),
        "20261204T114000Z": ("hourly",),
    }


def test_hourly_buckets_are_clock_hours_not_sixty_minutes() -> None:
    # 12:59 and 13:01 are two minutes apart but in different hours; 13:01 and 13:59 share one.
    assert kept(apply(snaps("2026-12-04T12:59", "2026-12-04T13:01", "2026-12-04T13:59"), only(hourly=2))) == {
        "20261204T135900Z": ("hourly", "newest"),
        "20261204T125900Z": ("hourly",),
    }


def test_daily_counts_days_that_have_snapshots() -> None:
    # No snapshot on 2026-12-03: "daily 3" reaches back to 2026-12-02, not just 3 calendar days.
    snapshots = snaps(
        "2026-12-01T03:00",
        "2026-12-01T15:00",
        "2026-12-02T03:00",
        "2026-12-04T03:00",
        "2026-12-04T23:59:59",
        "2026-12-05T00:00",
    )
    assert kept(apply(snapshots, only(daily=3))) == {
        "20261205T000000Z": ("daily", "newest"),
        "20261204T235959Z": ("daily",),
        "20261202T030000Z": ("daily",),
    }


YEAR_END = [f"2026-12-{day}T03:00" for day in range(27, 32)] + [f"2027-01-{day:02d}T03:00" for day in range(1, 11)]


@pytest.mark.parametrize(
    ("weekly", "expected"),
    [
        (1, {"20270110T030000Z": ("weekly", "newest")}),
        # 2027-01-03 is a Sunday in ISO week 53 of 2026, not week 53 of 2027, so
        # 2026-12-28..2027-01-03 is one week and 2026-12-27 (week 52) the next.
        (2, {"20270110T030000Z": ("weekly", "newest"), "20270103T030000Z": ("weekly",)}),
        (
            3,
            {
                "20270110T030000Z": ("weekly", "newest"),
                "20270103T030000Z": ("weekly",),
                "20261227T030000Z": ("weekly",),
            },
        ),
        (
            10,
            {
                "20270110T030000Z": ("weekly", "newest"),
                "20270103T030000Z": ("weekly",),
                "20261227T030000Z": ("weekly",),
            },
        ),
    ],
)
def test_weekly_uses_iso_weeks_across_the_year_end(weekly: int, expected: dict[str, tuple[str, ...]]) -> None:
    assert len(YEAR_END) == 15
    assert kept(apply(snaps(*YEAR_END), only(weekly=weekly))) == expected


@pytest.mark.parametrize(
    ("earlier", "later", "same_week"),
    [
        ("2026-12-31T12:00", "2027-01-01T12:00", True),  # both in 2026-W53
        ("2026-12-27T23:59", "2026-12-28T00:00", False),  # Sunday of W52, Monday of W53
        ("2027-01-03T23:59", "2027-01-04T00:00", False),  # Sunday of 2026-W53, Monday of 2027-W01
        ("2025-12-28T12:00", "2025-12-29T12:00", False),  # 2025-W52, then 2026-W01 starting in 2025
        ("2025-12-29T12:00", "2026-01-01T12:00", True),  # both in 2026-W01
    ],
)
def test_iso_week_boundaries(earlier: str, later: str, same_week: bool) -> None:
    expected = {snap(later)[0]: ("weekly", "newest")}
    if not same_week:
        expected[snap(earlier)[0]] = ("weekly",)
    assert kept(apply(snaps(earlier, later), only(weekly=2))) == expected


def test_monthly_keeps_the_newest_of_each_recent_month() -> None:
    snapshots = snaps(
        "2026-10-15T03:00",
        "2026-10-31T23:59",
        "2026-11-01T00:00",
        "2026-11-20T03:00",
        "2026-12-01T03:00",
        "2026-12-31T23:00",
        "2027-01-01T00:30",
    )
    assert kept(apply(snapshots, only(monthly=3))) == {
        "20270101T003000Z": ("monthly", "newest"),
        "20261231T230000Z": ("monthly",),
        "20261120T030000Z": ("monthly",),
    }
    assert kept(apply(snapshots, only(monthly=4))) == {
        "20270101T003000Z": ("monthly", "newest"),
        "20261231T230000Z": ("monthly",),
        "20261120T030000Z": ("monthly",),
        "20261031T235900Z": ("monthly",),
    }


# --- combinations, zeros, edges ---


def test_a_single_snapshot_is_kept_for_every_reason() -> None:
    assert kept(apply(snaps("2026-12-04T03:00"), Policy())) == {"20261204T030000Z": ALL_REASONS}


def test_a_snapshot_kept_for_several_reasons_lists_them_all_in_rule_order() -> None:
    snapshots = snaps("2026-11-29T03:00", "2026-11-30T03:00", "2026-12-01T03:00", "2026-12-01T04:00")
    # 2026-11-29 is the Sunday before, 2026-11-30 the Monday of 2026-12-01's ISO week.
    assert kept(apply(snapshots, only(last=1, daily=2, weekly=2, monthly=2))) == {
        "20261201T040000Z": ("last", "daily", "weekly", "monthly", "newest"),
        "20261130T030000Z": ("daily", "monthly"),
        "20261129T030000Z": ("weekly",),
    }


def test_all_counts_zero_keeps_only_the_newest() -> None:
    decisions = apply(snaps("2026-12-02T03:00", "2026-12-04T03:00", "2026-12-03T03:00"), NONE)
    assert [(d.id, d.keep, d.reasons) for d in decisions] == [
        ("20261204T030000Z", True, ("newest",)),
        ("20261203T030000Z", False, ()),
        ("20261202T030000Z", False, ()),
    ]


def test_the_newest_is_kept_when_last_is_zero() -> None:
    decisions = apply(snaps("2026-12-04T03:00", "2026-12-04T03:30"), only(daily=0, monthly=0, weekly=0, hourly=0))
    assert kept(decisions) == {"20261204T033000Z": ("newest",)}
    assert kept(apply(snaps("2026-12-04T03:00"), Policy(last=0))) == {
        "20261204T030000Z": ("hourly", "daily", "weekly", "monthly", "newest")
    }


def test_fewer_snapshots_than_the_counts_keeps_them_all() -> None:
    snapshots = snaps("2026-11-04T03:00", "2026-12-03T03:00", "2026-12-04T03:00")
    # 2026-12-03 shares 2026-12-04's ISO week (49) and month; 2026-11-04 is in week 45.
    assert kept(apply(snapshots, Policy())) == {
        "20261204T030000Z": ALL_REASONS,
        "20261203T030000Z": ("last", "hourly", "daily"),
        "20261104T030000Z": ("last", "hourly", "daily", "weekly", "monthly"),
    }


def test_the_newest_of_a_bucket_is_the_one_kept() -> None:
    assert kept(apply(snaps("2026-12-04T01:00", "2026-12-04T17:00", "2026-12-04T09:00"), only(daily=1))) == {
        "20261204T170000Z": ("daily", "newest")
    }
    # An older day is represented by its newest snapshot too.
    assert kept(apply(snaps("2026-12-03T01:00", "2026-12-03T23:00", "2026-12-04T01:00"), only(daily=2))) == {
        "20261204T010000Z": ("daily", "newest"),
        "20261203T230000Z": ("daily",),
    }


def test_snapshots_at_the_same_time_sort_by_id_descending() -> None:
    time = at("2026-12-04T03:00")
    snapshots = [("a", time), ("c", time), ("b", time), ("d", time - timedelta(seconds=1))]
    decisions = apply(snapshots, only(daily=1))
    assert [(d.id, d.reasons) for d in decisions] == [("c", ("daily", "newest")), ("b", ()), ("a", ()), ("d", ())]
    assert apply(list(reversed(snapshots)), only(daily=1)) == decisions


def test_input_order_does_not_matter() -> None:
    snapshots = realistic_snapshots()
    shuffled = snapshots.copy()
    random.Random(7).shuffle(shuffled)
    assert shuffled != snapshots
    decisions = apply(shuffled, Policy())
    assert decisions == apply(snapshots, Policy())
    assert [d.time for d in decisions] == sorted((time for _, time in snapshots), reverse=True)


def test_any_iterable_is_accepted() -> None:
    def generate() -> Iterator[tuple[str, datetime]]:
        yield snap("2026-12-03T03:00")
        yield snap("2026-12-04T03:00")

    assert kept(apply(generate(), only(last=1))) == {"20261204T030000Z": ("last", "newest")}


def test_naive_datetimes_are_utc() -> None:
    naive = datetime(2026, 12, 4, 3, 0)
    two_hours_east = datetime(2026, 12, 4, 4, 0, tzinfo=timezone(timedelta(hours=2)))  # 02:00 UTC
    decisions = apply([("naive", naive), ("east", two_hours_east)], only(hourly=2))
    assert [(d.id, d.time, d.reasons) for d in decisions] == [
        ("naive", datetime(2026, 12, 4, 3, 0, tzinfo=UTC), ("hourly", "newest")),
        ("east", datetime(2026, 12, 4, 2, 0, tzinfo=UTC), ("hourly",)),
    ]
    assert all(d.time.tzinfo is UTC for d in decisions)


def test_aware_datetimes_are_bucketed_in_utc() -> None:
    # 01:00 on 1 December at +02:00 is 23:00 on 30 November in UTC: the same month as "b".
    east = datetime(2026, 12, 1, 1, 0, tzinfo=timezone(timedelta(hours=2)))
    decisions = apply([("a", east), ("b", at("2026-11-30T12:00"))], only(monthly=2))
    assert [(d.id, d.time, d.reasons) for d in decisions] == [
        ("a", at("2026-11-30T23:00"), ("monthly", "newest")),
        ("b", at("2026-11-30T12:00"), ()),
    ]
    # 22:00 on 31 December at -05:00 is already January in UTC: a month of its own.
    west = datetime(2026, 12, 31, 22, 0, tzinfo=timezone(timedelta(hours=-5)))
    assert kept(apply([("c", west), ("d", at("2026-12-31T12:00"))], only(monthly=2))) == {
        "c": ("monthly", "newest"),
        "d": ("monthly",),
    }


def test_duplicate_ids_are_refused() -> None:
    twice = [("b", at("2026-12-01T03:00")), ("a", at("2026-12-02T03:00"))] * 2
    with pytest.raises(ValueError, match=r"^snapshot ids occur more than once: a, b$"):
        apply([*twice, ("c", at("2026-12-03T03:00"))], NONE)


# --- a realistic repository ---


def realistic_snapshots() -> list[tuple[str, datetime]]:
    """90 nightly runs at 03:00 up to 2026-12-04, and hourly runs at :30 for the last 24 hours."""
    nightly = [at("2026-09-06T03:00") + timedelta(days=day) for day in range(90)]
    hourly = [at("2026-12-03T12:30") + timedelta(hours=hour) for hour in range(24)]
    assert nightly[-1] == at("2026-12-04T03:00")
    assert hourly[-1] == at("2026-12-04T11:30")
    return [(time.strftime("%Y%m%dT%H%M%SZ"), time) for time in nightly + hourly]


def test_ninety_days_of_nightly_and_a_day_of_hourly_snapshots() -> None:
    decisions = apply(realistic_snapshots(), Policy())
    assert len(decisions) == 114
    # 2026-12-04 is a Friday: the weekly snapshots are the Sundays before it.
    # The 03:00 runs of 2026-12-03 and 2026-12-04 share their hour and day with a
    # newer :30 run, and so are forgotten.
    assert kept(decisions) == {
        "20261204T113000Z": ALL_REASONS,
        "20261204T103000Z": ("last", "hourly"),
        "20261204T093000Z": ("last", "hourly"),
        "20261204T083000Z": ("last", "hourly"),
        "20261204T073000Z": ("last", "hourly"),
        "20261204T063000Z": ("last", "hourly"),
        "20261204T053000Z": ("last", "hourly"),
        "20261204T043000Z": ("hourly",),
        "20261204T033000Z": ("hourly",),
        "20261204T023000Z": ("hourly",),
        "20261204T013000Z": ("hourly",),
        "20261204T003000Z": ("hourly",),
        "20261203T233000Z": ("hourly", "daily"),
        "20261203T223000Z": ("hourly",),
        "20261203T213000Z": ("hourly",),
        "20261203T203000Z": ("hourly",),
        "20261203T193000Z": ("hourly",),
        "20261203T183000Z": ("hourly",),
        "20261203T173000Z": ("hourly",),
        "20261203T163000Z": ("hourly",),
        "20261203T153000Z": ("hourly",),
        "20261203T143000Z": ("hourly",),
        "20261203T133000Z": ("hourly",),
        "20261203T123000Z": ("hourly",),
        "20261202T030000Z": ("daily",),
        "20261201T030000Z": ("daily",),
        "20261130T030000Z": ("daily", "monthly"),
        "20261129T030000Z": ("daily", "weekly"),
        "20261128T030000Z": ("daily",),
        "20261127T030000Z": ("daily",),
        "20261126T030000Z": ("daily",),
        "20261125T030000Z": ("daily",),
        "20261124T030000Z": ("daily",),
        "20261123T030000Z": ("daily",),
        "20261122T030000Z": ("daily", "weekly"),
        "20261121T030000Z": ("daily",),
        "20261115T030000Z": ("weekly",),
        "20261108T030000Z": ("weekly",),
        "20261101T030000Z": ("weekly",),
        "20261031T030000Z": ("monthly",),
        "20261025T030000Z": ("weekly",),
        "20261018T030000Z": ("weekly",),
        "20260930T030000Z": ("monthly",),
    }


# --- properties ---

ZONES = [None, UTC, timezone(timedelta(hours=-5)), timezone(timedelta(hours=5, minutes=30))]


@st.composite
def snapshot_sets(draw: st.DrawFn) -> list[tuple[str, datetime]]:
    """Snapshots near a year end, spaced in units from minutes to months so buckets fill and collide.

    Equal offsets give equal times (ties broken by id); each time is given naive
    (meaning UTC) or in one of a few zones, which must not change any decision.
    """
    unit = draw(st.sampled_from([timedelta(minutes=7), timedelta(hours=5), timedelta(days=1), timedelta(days=9)]))
    offsets = draw(st.lists(st.integers(0, 120), max_size=40))
    base = datetime(2026, 12, 20, tzinfo=UTC)
    snapshots = []
    for number, offset in enumerate(offsets):
        time = base + offset * unit
        zone = draw(st.sampled_from(ZONES))
        snapshots.append((f"s{number:02d}", time.replace(tzinfo=None) if zone is None else time.astimezone(zone)))
    return snapshots


policies = st.builds(
    Policy,
    last=st.integers(0, 5),
    hourly=st.integers(0, 6),
    daily=st.integers(0, 6),
    weekly=st.integers(0, 6),
    monthly=st.integers(0, 6),
)


def utc(time: datetime) -> datetime:
    return time.replace(tzinfo=UTC) if time.tzinfo is None else time.astimezone(UTC)


def oracle(snapshots: list[tuple[str, datetime]], policy: Policy) -> dict[str, tuple[str, ...]]:
    """The rules restated without the walk: each calendar rule keeps the newest
    snapshot of each of its N most recent buckets, with buckets as sortable strings."""
    ordered = sorted(((utc(time), snapshot_id) for snapshot_id, time in snapshots), reverse=True)
    reasons: dict[str, list[str]] = {snapshot_id: [] for _, snapshot_id in ordered}
    for _, snapshot_id in ordered[: policy.last]:
        reasons[snapshot_id].append("last")
    for rule, pattern in [("hourly", "%Y-%m-%d %H"), ("daily", "%Y-%m-%d"), ("weekly", "%G-W%V"), ("monthly", "%Y-%m")]:
        newest_in_bucket: dict[str, str] = {}
        for time, snapshot_id in ordered:
            newest_in_bucket.setdefault(time.strftime(pattern), snapshot_id)
        for bucket in sorted(newest_in_bucket, reverse=True)[: getattr(policy, rule)]:
            reasons[newest_in_bucket[bucket]].append(rule)
    if ordered:
        reasons[ordered[0][1]].append("newest")
    return {snapshot_id: tuple(why) for snapshot_id, why in reasons.items()}


@settings(max_examples=300, deadline=None)
@given(snapshots=snapshot_sets(), policy=policies)
def test_property_decisions_match_the_rules(snapshots: list[tuple[str, datetime]], policy: Policy) -> None:
    decisions = apply(snapshots, policy)
    assert [(d.time, d.id) for d in decisions] == sorted(((utc(t), i) for i, t in snapshots), reverse=True)
    assert all(d.keep == bool(d.reasons) for d in decisions)
    assert {d.id: d.reasons for d in decisions} == oracle(snapshots, policy)


@settings(max_examples=300, deadline=None)
@given(snapshots=snapshot_sets(), policy=policies)
def test_property_the_newest_is_always_kept(snapshots: list[tuple[str, datetime]], policy: Policy) -> None:
    decisions = apply(snapshots, policy)
    if not snapshots:
        assert decisions == []
        return
    newest_time, newest_id = max((utc(t), i) for i, t in snapshots)
    assert (decisions[0].id, decisions[0].time, decisions[0].keep) == (newest_id, newest_time, True)
    assert [d.id for d in decisions if "newest" in d.reasons] == [newest_id]
    assert decisions[0].reasons[-1] == "newest"


@settings(max_examples=300, deadline=None)
@given(snapshots=snapshot_sets(), policy=policies)
def test_property_at_most_one_snapshot_per_count(snapshots: list[tuple[str, datetime]], policy: Policy) -> None:
    kept_count = sum(d.keep for d in apply(snapshots, policy))
    assert kept_count <= sum(dataclasses.astuple(policy)) + 1
    assert kept_count >= min(len(snapshots), 1)


@settings(max_examples=300, deadline=None)
@given(snapshots=snapshot_sets(), policy=policies)
def test_property_the_kept_set_is_kept_again(snapshots: list[tuple[str, datetime]], policy: Policy) -> None:
    # As in restic: forgetting with the same policy twice removes nothing the second time,
    # and every snapshot is kept again for the same reasons.
    first = [d for d in apply(snapshots, policy) if d.keep]
    second = apply([(d.id, d.time) for d in first], policy)
    assert second == first
