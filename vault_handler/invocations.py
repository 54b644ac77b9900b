"""Host invocations: the Functions host POSTs every non-HTTP trigger to `/<functionName>`.

Jobs are registered by function name, as `module:attribute` strings that are
imported on first use, so the timers' dependencies stay off the handler's
start path. A job gets an `Invocation` and returns a `JobResult`; the answer is
the custom-handler envelope `{"Outputs", "Logs", "ReturnValue"}`.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.settings import Settings

log = logging.getLogger("vaultfn.invocations")


@dataclass(frozen=True)
class Invocation:
    """What the host sent (`Data`, `Metadata`), and the settings the job runs under."""

    function: str
    data: dict[str, Any]
    metadata: dict[str, Any]
    settings: Settings | None = field(default=None, repr=False)

    @property
    def past_due(self) -> bool:
        timer = self.data.get("timer")
        return bool(timer.get("IsPastDue")) if isinstance(timer, dict) else False


@dataclass
class JobResult:
    return_value: Any = None
    logs: list[str] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)


Job = Callable[[Invocation], Awaitable[JobResult]]

# Function name -> "module:attribute" of its job.
FUNCTION_JOBS: dict[str, str] = {"keepwarm_timer": "keepwarm_timer.job:run", "backup_timer": "backup_timer.job:run"}


class Dispatcher:
    def __init__(self, jobs: Mapping[str, Job | str], settings: Settings | None = None) -> None:
        self._jobs = dict(jobs)
        self._settings = settings

    def _job(self, name: str) -> Job:
        job = self._jobs[name]
        if isinstance(job, str):
            module, _, attribute = job.partition(":")
            job = getattr(importlib.import_module(module), attribute)
            self._jobs[name] = job
        return job

    async def dispatch(self, name: str, body: bytes) -> tuple[int, dict[str, Any]]:
        if name not in self._jobs:
            known = ", ".join(sorted(self._jobs)) or "none"
            return _error(404, f"no function named {name!r} (known: {known})")
        try:
            payload = json.loads(body or b"{}")
        except ValueError as error:
            return _error(400, f"invocation payload is not JSON: {error}")
        if not isinstance(payload, dict):
            return _error(400, "invocation payload must be a JSON object with Data and Metadata")
        data, metadata = payload.get("Data", {}), payload.get("Metadata", {})
        if not isinstance(data, dict) or not isinstance(metadata, dict):
            return _error(400, "invocation payload's Data and Metadata must be JSON objects")
        timer = data.get("timer")
        if timer is not None and not _timer_info(timer):
            return _error(
                400,
                "invocation payload's Data.timer must be the host's TimerInfo: an object with a boolean IsPastDue "
                "and ScheduleStatus null or an object",
            )
        try:
            result = await self._job(name)(Invocation(name, data, metadata, self._settings))
            if not isinstance(result, JobResult):
                raise TypeError(f"the job returned {type(result).__name__}, not a JobResult")
            envelope = {"Outputs": result.outputs, "Logs": result.logs, "ReturnValue": result.return_value}
            json.dumps(envelope)  # fail here, inside the invocation, not while answering
        except Exception as error:  # a failing job must not take the handler down
            log.exception("function %s failed", name)
            return 500, {"Outputs": {}, "Logs": [f"{name} failed: {error}"], "ReturnValue": None}
        return 200, envelope


def _timer_info(timer: Any) -> bool:
    return (
        isinstance(timer, dict)
        and isinstance(timer.get("IsPastDue", False), bool)
        and isinstance(timer.get("ScheduleStatus"), dict | None)
    )


def _error(status: int, message: str) -> tuple[int, dict[str, Any]]:
    return status, {"error": message, "Logs": [message]}
