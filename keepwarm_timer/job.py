"""The host's `POST /keepwarm_timer`: one health check, returned as the invocation's result.

A sealed or unreachable Vault is a successful check with a bad result: the
invocation fails only when the checker itself is broken.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from shared import telemetry
from shared.settings import Settings
from shared.telemetry import METRIC_BACKUP_AGE_H, METRIC_HEALTHY
from vault_handler.invocations import Invocation, JobResult

from .check import check, health_url

log = logging.getLogger("vaultfn.keepwarm")


async def run(invocation: Invocation) -> JobResult:
    settings = invocation.settings
    result = await check(health_url(settings), settings.keepwarm_timeout)
    summary = result.summary()
    if invocation.past_due:
        summary += " (this run was past due)"
    sink = telemetry.current()
    if sink.enabled:
        properties = {"state": result.state, "status": result.status, "version": result.version}
        sink.availability(result.healthy, result.latency_ms, summary, properties)
        sink.metric(METRIC_HEALTHY, 1.0 if result.healthy else 0.0, {"state": result.state})
        age = await asyncio.to_thread(backup_age_hours, settings)
        if age is not None:
            sink.metric(METRIC_BACKUP_AGE_H, age)
    return JobResult(return_value={**result.as_dict(), "past_due": invocation.past_due}, logs=[summary])


def backup_age_hours(settings: Settings) -> float | None:
    """Hours since the newest committed backup, so that a stalled backup shows on every keep-warm run."""
    from backup_timer.commands import open_repository  # noqa: PLC0415 - Azure SDK, only with telemetry

    try:
        latest = open_repository(settings.backup).latest()
    except Exception as error:  # no repository configured or reachable: report no age rather than fail
        log.info("backup age unknown: %s", error)
        return None
    if latest is None:
        return None
    return round((datetime.now(UTC) - latest.moment).total_seconds() / 3600, 2)
