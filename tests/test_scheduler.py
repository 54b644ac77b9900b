"""The local timer scheduler's discovery of schedules and the payloads it sends."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shared.settings import APP_DIR, Settings
from vault_handler.scheduler import ScheduleError, TimerFunction, discover, timer_payload


def app_with(tmp_path: Path, **schedules: str) -> Path:
    for name, schedule in schedules.items():
        (tmp_path / name).mkdir()
        binding = {"name": "timer", "type": "timerTrigger", "direction": "in", "schedule": schedule}
        (tmp_path / name / "function.json").write_text(json.dumps({"bindings": [binding]}))
    (tmp_path / "http_fn").mkdir()
    (tmp_path / "http_fn" / "function.json").write_text(json.dumps({"bindings": [{"type": "httpTrigger"}]}))
    return tmp_path


def test_the_apps_own_timers_with_their_default_schedules() -> None:
    assert discover(APP_DIR, Settings.from_env({})) == [
        TimerFunction("backup_timer", "0 0 3 * * *"),
        TimerFunction("keepwarm_timer", "0 */5 * * * *"),
    ]


def test_setting_references_resolve_from_the_environment(tmp_path: Path) -> None:
    app = app_with(tmp_path, a_timer="%A_SCHEDULE%", b_timer="30 0 3 * * Mon-Fri")
    settings = Settings.from_env({"A_SCHEDULE": "*/10 * * * * *"})
    assert discover(app, settings) == [
        TimerFunction("a_timer", "*/10 * * * * *"),
        TimerFunction("b_timer", "30 0 3 * * Mon-Fri"),
    ]


def test_an_unset_setting_is_an_error_naming_function_and_setting(tmp_path: Path) -> None:
    with pytest.raises(ScheduleError, match=r"^a_timer: schedule %A_SCHEDULE% refers to A_SCHEDULE, which is not set$"):
        discover(app_with(tmp_path, a_timer="%A_SCHEDULE%"), Settings.from_env({}))


@pytest.mark.parametrize("expression", ["0 */5 * * *", "every five minutes", "61 * * * * *", "0 0 25 * * *"])
def test_invalid_expressions_are_refused(tmp_path: Path, expression: str) -> None:
    with pytest.raises(ScheduleError, match=r"^a_timer: schedule '.*' is not a six-field NCRONTAB expression"):
        discover(app_with(tmp_path, a_timer=expression), Settings.from_env({}))


def test_first_run_payload_has_null_schedule_status() -> None:
    now = datetime.now(UTC)
    payload = timer_payload("keepwarm_timer", None, now, now + timedelta(minutes=5))
    assert payload["Data"]["timer"] == {"Schedule": {"AdjustForDST": True}, "ScheduleStatus": None, "IsPastDue": False}
    sys_meta = payload["Metadata"]["sys"]
    assert sys_meta["MethodName"] == "keepwarm_timer" and sys_meta["UtcNow"].endswith("Z") and sys_meta["RandGuid"]


def test_late_run_is_past_due_and_carries_its_schedule_status() -> None:
    scheduled = datetime(2026, 12, 4, 3, 0, tzinfo=UTC)
    payload = timer_payload("backup_timer", scheduled - timedelta(days=1), scheduled, scheduled + timedelta(days=1))
    timer = payload["Data"]["timer"]
    assert timer["IsPastDue"] is True
    assert timer["ScheduleStatus"]["Last"] == "2026-12-03T03:00:00Z"
    assert timer["ScheduleStatus"]["Next"] == "2026-12-05T03:00:00Z"
