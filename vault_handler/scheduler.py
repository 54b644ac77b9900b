"""Fire the timer functions without the Functions host (`make run`, tests).

Reads every `*/function.json` timer binding, resolves `%SETTING%` schedules,
and invokes the same dispatcher with the payload the host would send. Under
the host (`FUNCTIONS_CUSTOMHANDLER_PORT` set) the host fires the timers and
this scheduler stays off.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.settings import Settings

from .invocations import Dispatcher

log = logging.getLogger("vaultfn.scheduler")

_SETTING_REFERENCE = re.compile(r"%([A-Za-z0-9_]+)%")
PAST_DUE_AFTER = 1.0  # seconds late before a run counts as past due, like the host's


class ScheduleError(ValueError):
    """A timer function whose schedule cannot be used; names the function and the expression."""


@dataclass(frozen=True)
class TimerFunction:
    name: str
    schedule: str


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def discover(app_dir: Path, settings: Settings) -> list[TimerFunction]:
    """The app's timer functions with their resolved, validated schedules."""
    from croniter import croniter  # noqa: PLC0415 - only outside the host, after the port is open

    timers = []
    for path in sorted(app_dir.glob("*/function.json")):
        bindings = json.loads(path.read_text(encoding="utf-8")).get("bindings", [])
        for binding in bindings:
            if binding.get("type") != "timerTrigger":
                continue
            name = path.parent.name
            expression = str(binding.get("schedule", ""))
            reference = _SETTING_REFERENCE.fullmatch(expression)
            if reference:
                resolved = settings.schedule(reference.group(1))
                if not resolved:
                    raise ScheduleError(
                        f"{name}: schedule {expression} refers to {reference.group(1)}, which is not set"
                    )
                expression = resolved
            if len(expression.split()) != 6 or not croniter.is_valid(expression, second_at_beginning=True):
                raise ScheduleError(
                    f"{name}: schedule {expression!r} is not a six-field NCRONTAB expression "
                    "(second minute hour day month day-of-week), e.g. '0 */5 * * * *'"
                )
            timers.append(TimerFunction(name, expression))
    return timers


def timer_payload(function: str, last: datetime | None, scheduled: datetime, following: datetime) -> dict[str, Any]:
    """The body the host POSTs for a timer trigger (../shared/FACTS.md, section 1)."""
    import uuid  # noqa: PLC0415 - off the handler's start path

    now = datetime.now(UTC)
    status = None
    if last is not None:
        status = {"Last": _iso(last), "Next": _iso(following), "LastUpdated": _iso(now)}
    return {
        "Data": {
            "timer": {
                "Schedule": {"AdjustForDST": True},
                "ScheduleStatus": status,
                "IsPastDue": (now - scheduled).total_seconds() > PAST_DUE_AFTER,
            }
        },
        "Metadata": {"sys": {"MethodName": function, "UtcNow": _iso(now), "RandGuid": str(uuid.uuid4())}},
    }


class LocalScheduler:
    def __init__(self, timers: list[TimerFunction], dispatcher: Dispatcher) -> None:
        self.timers = timers
        self.dispatcher = dispatcher
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for timer in self.timers:
            log.info("firing %s locally on schedule %r", timer.name, timer.schedule)
            self._tasks.append(loop.create_task(self._run(timer)))

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()

    async def _run(self, timer: TimerFunction) -> None:
        from croniter import croniter  # noqa: PLC0415

        last: datetime | None = None
        while True:
            # From now, not from the last slot: a run that overran skips the slots it missed, as
            # on the host; but never before the last slot, as a sleep may end a little early.
            base = datetime.now(UTC) if last is None else max(datetime.now(UTC), last)
            scheduled = croniter(timer.schedule, base, second_at_beginning=True).get_next(datetime)
            await asyncio.sleep(max(0.0, (scheduled - datetime.now(UTC)).total_seconds()))
            following = croniter(timer.schedule, scheduled, second_at_beginning=True).get_next(datetime)
            payload = timer_payload(timer.name, last, scheduled, following)
            status, answer = await self.dispatcher.dispatch(timer.name, json.dumps(payload).encode())
            level = logging.INFO if status == 200 else logging.ERROR
            log.log(level, "%s: HTTP %d %s", timer.name, status, "; ".join(answer.get("Logs", [])))
            last = scheduled
